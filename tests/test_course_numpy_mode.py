"""The course-API suite (tests/course/) in the numpy mode: NEEDLE_BACKEND is read once, at
import, so the suite runs again in a fresh interpreter with NEEDLE_BACKEND=np. (In this
process it runs in the default NDArray mode.)"""

import os
import pathlib
import subprocess
import sys

COURSE = pathlib.Path(__file__).parent / "course"


def passes_in_the_numpy_mode(path: pathlib.Path) -> None:
    """pytest on `path` in a fresh interpreter with NEEDLE_BACKEND=np: it passes."""
    env = dict(os.environ, NEEDLE_BACKEND="np")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_course_suite_passes_in_the_numpy_mode():
    passes_in_the_numpy_mode(COURSE)


def test_inplace_ops_pass_in_the_numpy_mode():
    """In-place ops write into the numpy mode's NumPy arrays: the same torch comparisons."""
    passes_in_the_numpy_mode(pathlib.Path(__file__).parent / "test_inplace.py")
