"""The backends the conformance suite runs on, and the parametrisation from the table.

Every backend that can run here: the NumPy reference itself (its own primitives against
the table's references, and every fallback over its core primitives), the C++ CPU backend
when it is built, the CUDA backend's kernels through the CUDA emulation, the Metal kernels
through the MSL emulation (once with each matmul kernel), and the real cuda, metal and mps
devices when this machine has them. Emulations are built on first use; without a C++
compiler they are skipped with that reason, and a build that fails is a failure.

A test that takes `backend` runs once per backend; with `prim` also once per row of
``primitives.TABLE`` that the backend runs, and with `dtype` once per dtype of that row that
the backend holds (a test without `prim` that names its rows, test_conformance.rows: once per
dtype one of them takes). Nothing is generated for a backend that is not here.
"""

import os
import shutil
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

import needle as ndl
from needle.backend_ndarray import metal_primitives, ndarray_backend_numpy as nb_np, primitives
from needle.conformance.cases import Backend


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
    # The C++ compiler an emulation needs: absent, its tests are skipped with that reason.
    # A compiler that is there but fails on the sources is a failure, not a skip.
    compiler: Optional[str] = None


def _cuda_emulation():
    from needle.emulation.cuda import harness

    return harness.emulated_backend()


def _metal_emulation(*matmul_kernels):
    from needle.emulation.metal import harness

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
    from needle.emulation.cuda.harness import CXX as CUDA_CXX
    from needle.emulation.metal.harness import CXX as METAL_CXX

    # The CUDA module's DTYPES are every dtype of the table (test_cuda.py checks them: the
    # emulation is not built at collection time to read them).
    specs.append(Spec("cuda_emulated", _cuda_emulation, ordered_scatter=False, compiler=CUDA_CXX))

    metal_dtypes = metal_primitives.MetalBackend.DTYPES
    specs.append(
        Spec("metal_emulated", _metal_emulation, metal_dtypes, fast=False, compiler=METAL_CXX)
    )
    specs.append(
        Spec(
            "metal_emulated_threadgroup",
            lambda: _metal_emulation("matmul_threadgroup"),
            metal_dtypes,
            groups=frozenset({"linalg"}),
            fast=False,
            compiler=METAL_CXX,
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
    webgpu = ndl.webgpu()
    if webgpu.enabled():  # lavapipe in CI: a real WebGPU stack on a CPU Vulkan driver
        specs.append(Spec("webgpu", lambda: webgpu.mod, tuple(webgpu.mod.DTYPES)))
        # The paths of an adapter without 64-bit integers (int64 as u32 pairs) and without
        # subgroups, on a second device of the same adapter, which holds no float16 (no f16).
        basic = tuple(d for d in webgpu.mod.DTYPES if d != "float16")
        specs.append(Spec("webgpu_basic", _webgpu_without_optional_features, basic))
    return specs


def _webgpu_without_optional_features():
    from types import SimpleNamespace

    from needle.backend_ndarray import ndarray_backend_webgpu as webgpu, webgpu_runtime

    backend = webgpu.WebGPUBackend(webgpu_runtime.WebGPURuntime(features=()), "webgpu_basic")
    assert backend.int64_pairs and "subgroup" not in backend.runtime.features
    assert "float16" not in backend.DTYPES
    return SimpleNamespace(**backend.primitive_table())


# NEEDLE_TEST_DEVICES (tests/conftest.py, which checks the names) keeps those devices alone:
# the NumPy reference counts as cpu_numpy (its backend), webgpu_basic as webgpu, and the
# emulations as no device.
TEST_DEVICES = {n.strip() for n in os.environ.get("NEEDLE_TEST_DEVICES", "").split(",")} - {""}
_DEVICE_OF = {"numpy": "cpu_numpy", "webgpu_basic": "webgpu"}
SPECS = [s for s in _specs() if not TEST_DEVICES or _DEVICE_OF.get(s.id, s.id) in TEST_DEVICES]
_BUILT = {}


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    names = ["backend"] + [n for n in ("prim", "dtype") if n in metafunc.fixturenames]
    # A test of particular rows (test_conformance.rows) runs in the dtypes they take.
    tested_rows = getattr(metafunc.function, "rows", primitives.TABLE)
    test_dtypes = [
        d for d in primitives.DTYPES if any(d in primitives.TABLE[r].dtypes for r in tested_rows)
    ]
    if getattr(metafunc.function, "widths_only", False):  # int32 moves as float32 does
        test_dtypes = [d for d in test_dtypes if d != "int32"]
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
        if getattr(metafunc.function, "unlisted", False):  # rows with a dtype they do not take
            rows = [p for p in rows if not set(spec.dtypes) <= set(p.dtypes)]
        if getattr(metafunc.function, "halves", False):  # the rows it computes in 16 bits
            # (the norms, whose per-feature arrays stay float32, have tests of their own:
            # test_halves_cpu.py's test_batch_norm_rows_in_16_bits)
            rows = [
                p
                for p in rows
                if p.name in _half_rows(spec) and p.name not in primitives.HALF_ROW_FLOAT32_PARAMS
            ]
        for prim in rows:
            listed = primitives.HALFS if getattr(metafunc.function, "halves", False) else None
            dtypes = (
                [d for d in (listed or (prim.dtypes if prim else test_dtypes)) if d in spec.dtypes]
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


def _half_rows(spec) -> frozenset[str]:
    """The rows a backend computes on 16-bit floats itself (primitives.half_rows). Known at
    collection for the backends that need no compiler; the emulations list none."""
    return primitives.half_rows(spec.build()) if spec.compiler is None else frozenset()


@pytest.fixture
def backend(request) -> Backend:
    spec = request.param
    if spec.compiler is not None and shutil.which(spec.compiler) is None:
        pytest.skip(f"{spec.id} needs a C++ compiler ({spec.compiler}) to build its emulation")
    if spec.id not in _BUILT:
        _BUILT[spec.id] = Backend(
            spec.id, spec.build(), spec.dtypes, spec.fast, spec.ordered_scatter
        )
    return _BUILT[spec.id]
