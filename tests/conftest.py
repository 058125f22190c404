"""Shared fixtures: every test that takes `device` runs on each CPU backend.

The C++ backend is skipped, with the reason printed, when this build of needle lacks it.
CUDA joins the list when it is built and a GPU is present.
"""

import numpy as np
import pytest

import needle as ndl

_CPU_REASON = "C++ CPU backend not built (pip install -e . builds it)"
_CUDA_REASON = "CUDA backend not built or no GPU present"

DEVICES = [
    pytest.param(ndl.cpu_numpy(), id="cpu_numpy"),
    pytest.param(
        ndl.cpu(), id="cpu", marks=pytest.mark.skipif(not ndl.cpu().enabled(), reason=_CPU_REASON)
    ),
    pytest.param(
        ndl.cuda(), id="cuda",
        marks=pytest.mark.skipif(not ndl.cuda().enabled(), reason=_CUDA_REASON),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
