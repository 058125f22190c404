"""Every op of the op-spec table on the emulated GPU backends: the CUDA kernels (compiled by
the host C++ compiler, tests/cuda_emulation) and the Metal kernels (tests/metal_emulation).

Each spec's first sample, float32, values and gradients against torch (test_ops.check_op),
on a device whose backend module is the emulation: the same op code that runs on a GPU
calls the same kernels, so an op that composes primitives wrongly for a GPU backend (a row
it lacks, a layout it mishandles) fails here. The emulations run each GPU thread on the
CPU (Metal's each as an OS thread), so only the first sample; tests/backends runs every
primitive's own cases on them.
"""

import pytest
from op_specs import SPECS
from test_ops import check_op

from needle.backend_ndarray import BackendDevice


def _cuda():
    from needle.emulation.cuda import harness

    return harness.emulated_backend()


def _metal():
    from needle.emulation.metal import harness

    return harness.emulated_backend()


_DEVICES: dict[str, BackendDevice] = {}


def emulated_device(name: str) -> BackendDevice:
    """The emulated device, built once (skipped, with the reason, where it cannot build)."""
    if name not in _DEVICES:
        try:
            module = _cuda() if name == "cuda_emulation" else _metal()
        except (OSError, RuntimeError) as error:
            pytest.skip(f"the {name} does not build here: {error}")
        _DEVICES[name] = BackendDevice(name, module)
    return _DEVICES[name]


@pytest.mark.parametrize("emulation", ["cuda_emulation", "metal_emulation"])
@pytest.mark.parametrize("spec", [s for s in SPECS if s.samples], ids=repr)
def test_first_sample_on_the_emulated_gpu(spec, emulation):
    device = emulated_device(emulation)
    sample = spec.samples[0]
    arrays = sample.draw(spec)
    check_op(
        spec.call,
        spec.torch,
        arrays,
        device,
        kwargs=sample.kwargs,
        tol=sample.tol or spec.tol,
        label=f"{spec.name} on {emulation}",
    )
