"""The backends the conformance suite runs on, and the parametrisation from the table.

Every backend that can run here: the NumPy reference itself (its own primitives against
the table's references, and every fallback over its core primitives), the C++ CPU backend
when it is built, the CUDA backend's kernels through the CUDA emulation, the Metal kernels
through the MSL emulation (once with each matmul kernel), and the real cuda, metal and mps
devices when this machine has them. Emulations are built on first use; one that does not
build here is skipped with the build error as the reason.

A test that takes `backend` runs once per backend; with `prim` also once per row of
``primitives.TABLE`` that the backend runs, and with `dtype` once per dtype of that row that
the backend holds. Nothing is generated for a backend that is not here.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import pytest

import needle as ndl
from needle.backend_ndarray import metal_primitives, ndarray_backend_numpy as nb_np, primitives

from .cases import Backend


@dataclass(frozen=True)
class Spec:
    id: str
    build: Callable[[], object]
    dtypes: tuple[str, ...] = primitives.DTYPES
    groups: Optional[frozenset[str]] = None  # the table's groups it runs (None: all)
    # Large cases too (70,001 elements, matmuls past 256): not on the MSL emulation, which
    # runs every GPU thread as an OS thread.
    fast: bool = True
    # scatter_add_rows adds repeated rows in index order, so its sums are NumPy's to the bit
    # (CUDA adds with atomics, in no fixed order).
    ordered_scatter: bool = True
    build_errors: tuple[type, ...] = ()  # errors that mean "cannot run here": a skip


def _cuda_emulation():
    from cuda_emulation import harness

    return harness.emulated_backend()


def _metal_emulation(*matmul_kernels):
    from metal_emulation import harness

    if not matmul_kernels:
        return harness.emulated_backend()
    return harness.emulated_backend(
        f"metal_emulated_{matmul_kernels[0][7:]}", matmul_kernels=matmul_kernels
    )


def _specs():
    specs = [Spec("numpy", lambda: nb_np)]
    cpu = ndl.cpu()
    if cpu.enabled():
        specs.append(Spec("cpu", lambda: cpu.mod, tuple(cpu.mod.DTYPES)))
    # Another engineer may be mid-change in the CUDA emulation: any error building it is a
    # skip with that error, not a failure of every conformance test.
    specs.append(
        Spec("cuda_emulated", _cuda_emulation, ordered_scatter=False, build_errors=(Exception,))
    )
    from metal_emulation.harness import BuildError

    metal_dtypes = metal_primitives.MetalBackend.DTYPES
    specs.append(
        Spec(
            "metal_emulated", _metal_emulation, metal_dtypes, fast=False, build_errors=(BuildError,)
        )
    )
    specs.append(
        Spec(
            "metal_emulated_threadgroup",
            lambda: _metal_emulation("matmul_threadgroup"),
            metal_dtypes,
            groups=frozenset({"linalg"}),
            fast=False,
            build_errors=(BuildError,),
        )
    )
    if ndl.cuda().enabled():
        specs.append(
            Spec(
                "cuda", lambda: ndl.cuda().mod, tuple(ndl.cuda().mod.DTYPES), ordered_scatter=False
            )
        )
    for name in ("metal", "mps"):
        device = getattr(ndl, name)()
        if device.enabled():
            specs.append(Spec(name, lambda device=device: device.mod, metal_dtypes))
    return specs


SPECS = _specs()
_BUILT = {}


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    names = ["backend"] + [n for n in ("prim", "dtype") if n in metafunc.fixturenames]
    values, ids = [], []
    for spec in SPECS:
        if "prim" in names:
            rows = [
                p
                for p in primitives.TABLE.values()
                if spec.groups is None or p.group in spec.groups
            ]
        elif spec.groups is not None:
            continue
        else:
            rows = [None]
        for prim in rows:
            dtypes = (
                [d for d in (prim.dtypes if prim else primitives.DTYPES) if d in spec.dtypes]
                if "dtype" in names
                else [None]
            )
            for dtype in dtypes:
                value = (
                    [spec]
                    + ([prim] if "prim" in names else [])
                    + ([dtype] if "dtype" in names else [])
                )
                values.append(tuple(value) if len(value) > 1 else spec)
                ids.append(
                    "-".join([spec.id] + ([prim.name] if prim else []) + ([dtype] if dtype else []))
                )
    metafunc.parametrize(",".join(names), values, ids=ids, indirect=["backend"])


@pytest.fixture
def backend(request) -> Backend:
    spec = request.param
    if spec.id not in _BUILT:
        try:
            _BUILT[spec.id] = Backend(
                spec.id, spec.build(), spec.dtypes, spec.fast, spec.ordered_scatter
            )
        except spec.build_errors as error:
            _BUILT[spec.id] = error
    built = _BUILT[spec.id]
    if isinstance(built, Exception):
        pytest.skip(f"{spec.id} does not build here: {type(built).__name__}: {built}")
    return built
