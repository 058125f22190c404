"""Shared fixtures: every test that takes `device` runs on each device this machine has.

cpu_numpy always; the C++ backend (cpu) when this build of needle has it; cuda when it is
built and a GPU is present; metal and mps on a Mac with `pip install "needle[metal]"`.
Devices that are not here generate no tests at all (`pytest --collect-only -q` lists what
runs), so skips stay few and each one says why. metal and mps are float32-only: a test that
needs float64 on them is skipped, with the reason, instead of failing.

NEEDLE_TEST_DEVICES=cuda (comma-separated device names) keeps only those devices, here and in
the conformance suite (tests/backends: its emulations are left out too), so a GPU machine can
run the device tests on its GPU alone (benchmarks/gpu_check.sh). A name that is not an enabled
device here is a usage error, not zero tests that pass.
"""

import os

import numpy as np
import pytest

import needle as ndl


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-cases",
        type=int,
        default=20000,
        help="how many random cases tests/test_fuzz.py checks against NumPy (default 20000)",
    )


# The devices NEEDLE_TEST_DEVICES names (None: every enabled one).
TEST_DEVICES = [
    n.strip() for n in os.environ.get("NEEDLE_TEST_DEVICES", "").split(",") if n.strip()
]

# NDArray devices (in the numpy mode too, where ndl.all_devices() is the one NumPy device).
DEVICES = [
    pytest.param(device, id=device.name)
    for device in ndl.backend_ndarray.all_devices()
    if device.enabled() and (not TEST_DEVICES or device.name in TEST_DEVICES)
]


def pytest_configure(config):
    """A device NEEDLE_TEST_DEVICES names must be enabled here: a GPU run whose GPU went
    missing must fail, not pass with its tests never generated."""
    devices = {d.name: d for d in ndl.backend_ndarray.all_devices()}
    for name in TEST_DEVICES:
        if name not in devices:
            raise pytest.UsageError(
                f"NEEDLE_TEST_DEVICES: no device {name!r} (needle has {', '.join(devices)})"
            )
        if not devices[name].enabled():
            reason = " ".join(str(devices[name].reason).split())
            raise pytest.UsageError(f"NEEDLE_TEST_DEVICES: {name}() is not enabled: {reason}")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


@pytest.fixture
def rng():
    """A NumPy Generator seeded alike for every test."""
    return np.random.default_rng(0)


def pytest_collection_modifyitems(items):
    """A test parametrised with a dtype its device does not hold (float64 on metal, mps and
    webgpu) is skipped before it runs, with that reason."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        device = params.get("device")
        if not isinstance(device, ndl.backend_ndarray.BackendDevice):
            continue
        missing = [
            v
            for v in params.values()
            if isinstance(v, str) and v in ndl.backend_ndarray.DTYPES and v not in device.dtypes
        ]
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"{device.name}() holds no {missing[0]}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """float64 on a float32-only device (metal, mps) skips the test rather than failing it."""
    from needle.backend_ndarray.primitives import UnsupportedDtypeError

    try:
        return (yield)
    except UnsupportedDtypeError as error:
        pytest.skip(f"float32-only device: {error}")
