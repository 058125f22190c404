"""The course-API suite (tests/course/) in the numpy mode: NEEDLE_BACKEND is read once, at
import, so the suite runs again in a fresh interpreter with NEEDLE_BACKEND=np. (In this
process it runs in the default NDArray mode.)"""

import os
import pathlib
import subprocess
import sys

COURSE = pathlib.Path(__file__).parent / "course"


def test_course_suite_passes_in_the_numpy_mode():
    env = dict(os.environ, NEEDLE_BACKEND="np")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(COURSE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_inplace_ops_pass_in_the_numpy_mode():
    """In-place ops write into the numpy mode's NumPy arrays: the same torch comparisons."""
    env = dict(os.environ, NEEDLE_BACKEND="np")
    suite = pathlib.Path(__file__).parent / "test_inplace.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
