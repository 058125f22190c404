"""Packaging: needle imports without its native build, with a clear warning, and `import needle`
loads neither a GPU backend nor the applications."""

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib import resources
from pathlib import Path

import pytest

import needle as ndl

_BLOCK_NATIVE = textwrap.dedent(
    """
    import importlib.abc, sys, warnings

    class BlockNative(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith("needle.backend_ndarray.ndarray_backend_cpu"):
                raise ImportError("blocked for the test")
            return None

    sys.meta_path.insert(0, BlockNative())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import needle as ndl
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("C++ CPU backend is not built" in m for m in messages), messages
    assert ndl.default_device() == ndl.cpu_numpy()
    assert not ndl.cpu().enabled()
    x = ndl.Tensor([[1.0, 2.0]], device=ndl.default_device())
    (x * x).sum().backward()
    assert x.grad.numpy().tolist() == [[2.0, 4.0]]
    try:
        ndl.Tensor([1.0], device=ndl.cpu())
    except RuntimeError as error:
        assert "cpu() is not available" in str(error), error
    else:
        raise AssertionError("creating a tensor on a missing backend did not raise")
    print("ok")
    """
)


def _python(code: str) -> str:
    """What `code` prints, run by a fresh interpreter (which must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_imports_with_numpy_backend_only_when_native_build_is_missing():
    assert _python(_BLOCK_NATIVE).strip() == "ok"


def test_native_backend_is_built_in_this_install():
    # CI installs from source, so the C++ backend must be there; a silent fallback to NumPy
    # would hide a broken build.
    assert ndl.cpu().enabled(), "the C++ CPU backend did not build"
    assert ndl.default_device() == ndl.cpu()


def test_import_needle_leaves_the_applications_out():
    # The CLI, the training loop, the example models and the benchmarks live in needle.apps,
    # which `import needle` does not load: the core stays importable without their dependencies.
    code = (
        "import sys, needle\n"
        "apps = {'cli', 'training', 'trainer', 'bench', 'models'}\n"
        "print(sorted(m for m in sys.modules if m.startswith('needle.apps')\n"
        "             or (m.startswith('needle.') and apps & set(m.split('.')))))\n"
    )
    assert _python(code).strip() == "[]"
    assert not hasattr(ndl, "models")


def test_import_needle_touches_no_gpu_backend():
    # cuda() would initialise the CUDA driver (device_count), metal()/mps() load PyObjC and
    # webgpu() loads wgpu and requests an adapter.
    code = (
        "import sys, needle as ndl\n"
        "devices = (ndl.cuda(), ndl.metal(), ndl.mps(), ndl.webgpu())\n"
        "print(*['mod' in d.__dict__ for d in devices], 'wgpu' in sys.modules)\n"
        "ndl.cuda().enabled(); print('mod' in ndl.cuda().__dict__)"
    )
    assert _python(code).split() == ["False"] * 5 + ["True"]


def test_kernel_sources_ship_with_the_package():
    # The Metal and WebGPU backends read their kernels (metal/*.metal, webgpu/*.wgsl) beside
    # their modules, through importlib.resources; wheel.packages puts every file under
    # python/needle into the wheel. CI installs needle from a built wheel, so this checks the
    # installed copy against the source tree (in an editable install the two are the same).
    installed = resources.files("needle.backend_ndarray")
    source = Path(__file__).resolve().parents[1] / "python" / "needle" / "backend_ndarray"
    for folder, suffix in (("metal", ".metal"), ("webgpu", ".wgsl")):
        shipped = {f.name for f in (installed / folder).iterdir() if f.name.endswith(suffix)}
        assert shipped, f"no {folder}/*{suffix} in the installed package"
        if source.is_dir():
            assert {f.name for f in source.glob(f"{folder}/*{suffix}")} <= shipped


# The CPU sources whose kernels are chosen at run time (target attributes: the AVX512-BF16
# GEMM and conv kernels, the F16C/BF16 conversions), and the file whose CPU check guards them.
_DISPATCHED = ("gemm.cc", "conv.cc", "convert.cc")


@pytest.mark.skipif(not shutil.which("g++"), reason="no g++ to compile with")
def test_dispatched_kernels_compile_without_march_native(tmp_path):
    """NEEDLE_PORTABLE=ON builds without -march=native: each run-time kernel must then name
    every instruction set it uses in its target attribute (an intrinsic outside them fails to
    inline: avx512dq's fpclass once did). Compiling the three files at -O0 checks that
    without a whole build."""
    nanobind = pytest.importorskip("nanobind")
    source = Path(__file__).resolve().parents[1] / "src"
    if not (source / "cpu").is_dir():
        pytest.skip("not a source checkout")
    includes = [source, source / "cpu", nanobind.include_dir(), sysconfig.get_paths()["include"]]
    for name in _DISPATCHED:
        command = ["g++", "-std=c++17", "-O0", "-c", str(source / "cpu" / name)]
        command += [f"-I{folder}" for folder in includes] + ["-o", str(tmp_path / "x.o")]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{name}:\n{run.stderr[-3000:]}"
