"""Where data sets are found on disk: under $NEEDLE_DATA_DIR when it is set, else among the files
needle ships (the MNIST test split)."""

import os
from importlib import resources
from pathlib import Path
from typing import Optional

__all__ = ["DATA_DIR_VARIABLE", "shipped_data_dir", "find_data_dir"]

DATA_DIR_VARIABLE = "NEEDLE_DATA_DIR"


def shipped_data_dir() -> Path:
    """The folder of data shipped inside the package (see its README.md)."""
    return Path(str(resources.files("needle.data") / "shipped"))


def find_data_dir(name: str, *files: str) -> Optional[Path]:
    """The folder holding every one of `files` of data set `name` ("mnist", "ptb", ...):
    $NEEDLE_DATA_DIR/<name> when the variable is set and that folder has them all, else the
    shipped data when it has them all, else None (a test then skips, saying what is missing)."""
    folders = [shipped_data_dir()]
    if os.environ.get(DATA_DIR_VARIABLE):
        folders.insert(0, Path(os.environ[DATA_DIR_VARIABLE]).expanduser() / name)
    return next((f for f in folders if all((f / file).is_file() for file in files)), None)
