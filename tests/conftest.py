"""Shared fixtures: every test that takes `device` runs on each CPU backend.

The C++ backend is skipped, with the reason printed, when this build of needle lacks it.
CUDA joins the list when it is built and a GPU is present; metal and mps on a Mac with
`pip install "needle[metal]"`. Those two are float32-only: a test that needs float64 on them
is skipped, with the reason, instead of failing.
"""

import numpy as np
import pytest

import needle as ndl

_CPU_REASON = "C++ CPU backend not built (pip install -e . builds it)"
_CUDA_REASON = "CUDA backend not built or no GPU present"
_METAL_REASON = 'needs macOS with a Metal GPU and pip install "needle[metal]"'

DEVICES = [
    pytest.param(ndl.cpu_numpy(), id="cpu_numpy"),
    pytest.param(
        ndl.cpu(), id="cpu", marks=pytest.mark.skipif(not ndl.cpu().enabled(), reason=_CPU_REASON)
    ),
    pytest.param(
        ndl.cuda(), id="cuda",
        marks=pytest.mark.skipif(not ndl.cuda().enabled(), reason=_CUDA_REASON),
    ),
    pytest.param(
        ndl.metal(), id="metal",
        marks=pytest.mark.skipif(not ndl.metal().enabled(), reason=_METAL_REASON),
    ),
    pytest.param(
        ndl.mps(), id="mps",
        marks=pytest.mark.skipif(not ndl.mps().enabled(), reason=_METAL_REASON),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """float64 on a float32-only device (metal, mps) skips the test rather than failing it."""
    from needle.backend_ndarray.metal_primitives import UnsupportedDtypeError

    try:
        return (yield)
    except UnsupportedDtypeError as error:
        pytest.skip(f"float32-only device: {error}")
