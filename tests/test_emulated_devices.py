"""ndl.cuda_emulated() and ndl.metal_emulated(): the GPU kernels on the CPU as devices.

Ordinary needle code on them (Tensor ops, nn.Linear forward and backward) gives the CPU
device's results; a user's kernel folder (NEEDLE_CUDA_KERNELS, NEEDLE_METAL_KERNELS) holding
a copy of a shipped file with a barrier in divergent code or a write past the end is reported
with the kernel, block (threadgroup) and thread, exactly as docs/emulated_devices.md shows;
without a compiler the devices are disabled with a one-line reason naming CXX. The user
kernels and the missing compiler run in subprocesses, since a process builds its library once.
The conformance suite (tests/backends) runs every primitive on both emulations.
"""

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle import emulation, nn

ROOT = Path(__file__).resolve().parent.parent
CUDA_SRC = ROOT / "src" / "cuda"
METAL_SRC = ROOT / "python" / "needle" / "backend_ndarray" / "metal"
DEVICES = ["cuda_emulated", "metal_emulated"]

pytestmark = pytest.mark.skipif(
    shutil.which(emulation.compiler()) is None,
    reason=f"no C++ compiler ({emulation.compiler()}) to build the emulations",
)


def device(name):
    dev = getattr(ndl, name)()
    assert dev.enabled(), dev.reason  # a compiler is here: a build that fails is a failure
    return dev


def on(dev, array):
    return ndl.Tensor(array, device=dev, dtype="float32")


@pytest.mark.parametrize("name", DEVICES)
def test_tensor_ops_give_the_cpus_results(name):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))

    def compute(dev):
        x, w = on(dev, a), on(dev, b)
        y = ndl.ops.relu(x @ w) + ndl.exp(x.sum(axes=(1,))).reshape((5, 1)) * 0.5
        return [y.numpy(), x.transpose().numpy(), (x / 3 - 1).max(axes=(0,)).numpy()]

    for got, expected in zip(compute(device(name)), compute(ndl.cpu())):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DEVICES)
def test_linear_forward_and_backward_give_the_cpus_results(name):
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((8, 6)), rng.standard_normal((8, 4))
    weight, bias = rng.standard_normal((6, 4)), rng.standard_normal((1, 4))

    def step(dev):
        layer = nn.Linear(6, 4, device=dev)
        layer.weight.data, layer.bias.data = on(dev, weight), on(dev, bias)
        out = layer(on(dev, x))
        loss = ((out - on(dev, target)) ** 2).sum()
        loss.backward()
        return [out.numpy(), loss.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]

    for got, expected in zip(step(device(name)), step(ndl.cpu())):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_threads_can_share_cuda_emulated():
    """Python threads call the emulation with the GIL released: one call runs at a time."""
    dev, values = device("cuda_emulated"), (np.arange(4096) % 7).astype(np.float32)

    def work(k):
        return float((on(dev, values) * k).sum().numpy())

    with ThreadPoolExecutor(4) as pool:
        sums = list(pool.map(work, range(16)))
    assert sums == [float(values.sum()) * k for k in range(16)]


# ---- a user's kernels ------------------------------------------------------------------------
def edited_copy(source: Path, folder: Path, old: str, new: str) -> None:
    """folder/<source's name>: the shipped file with its one `old` replaced by `new`."""
    text = source.read_text()
    assert text.count(old) == 1, f"{source.name} no longer has one {old!r}"
    (folder / source.name).write_text(text.replace(old, new))


def run_script(script: str, **env) -> list[str]:
    """The lines a Python subprocess prints (stderr: the build time, not checked)."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


# Each fault on a line of its own: the exception's type and message.
FAULTS = """
import numpy as np
import needle as ndl
dev = ndl.{device}()
for fault in (lambda: ndl.Tensor(np.ones({shape}, "float32"), device=dev).sum(axes=(1,)),
              lambda: {second}):
    try:
        fault().numpy()
        print("no error")
    except Exception as error:
        print(type(error).__name__, error)
"""


def test_user_cuda_kernels_barrier_divergence_and_write_past_the_end(tmp_path):
    """reduce.cu with the first __syncthreads() of reduce_rows_block_kernel under
    `if (threadIdx.x < 16)`; layout.cu whose strided kernel runs i up to n inclusive."""
    edited_copy(
        CUDA_SRC / "reduce.cu",
        tmp_path,
        "    __syncthreads();\n    if (warp == 0) {",
        "    if (threadIdx.x < 16) __syncthreads();\n    if (warp == 0) {",
    )
    edited_copy(CUDA_SRC / "layout.cu", tmp_path, "i < n; i += stride)", "i <= n; i += stride)")
    transpose = (
        'ndl.Tensor(np.arange(32.0).reshape(4, 8), device=dev, dtype="float32").transpose() + 0'
    )
    script = FAULTS.format(device="cuda_emulated", shape=(1, 10000), second=transpose)
    barrier, write = run_script(script, NEEDLE_CUDA_KERNELS=str(tmp_path))
    line = re.search(r"reduce.cu:(\d+)", barrier)
    assert (
        line
        and "if (threadIdx.x < 16) __syncthreads();"
        in ((tmp_path / "reduce.cu").read_text().splitlines()[int(line.group(1)) - 1])
    )
    assert barrier == (
        "EmulationError kernel reduce (blocks per row), block (0, 0, 0), thread (16, 0, 0): "
        f"waits in a warp shuffle while thread (0, 0, 0) waits at __syncthreads() (reduce.cu:"
        f"{line.group(1)}): every thread of a block must reach the same barrier"
    )
    # 32 floats: the thread of element 32 (block 0, thread 32) writes byte 128 of the output.
    assert write == (
        "EmulationError kernel compact, block (0, 0, 0), thread (32, 0, 0): out-of-bounds "
        "write past the end of a buffer of 128 bytes (at byte 128), kernel argument 1"
    )


def test_user_metal_kernels_barrier_divergence_and_write_past_the_end(tmp_path):
    """reduce.metal with reduce_rows' first barrier under `if (t < 16)`; elementwise.metal
    whose fill writes out[size] too."""
    edited_copy(
        METAL_SRC / "reduce.metal",
        tmp_path,
        "  partial[t] = acc;\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n",
        "  partial[t] = acc;\n  if (t < 16) threadgroup_barrier(mem_flags::mem_threadgroup);\n",
    )
    edited_copy(
        METAL_SRC / "elementwise.metal",
        tmp_path,
        "  if (i < size) out[i] = value;",
        "  if (i <= size) out[i] = value;",
    )
    fill = "ndl.init.zeros(5, device=dev)"
    script = FAULTS.format(device="metal_emulated", shape=(4, 1000), second=fill)
    barrier, write = run_script(script, NEEDLE_METAL_KERNELS=str(tmp_path))
    # The threads of a threadgroup run concurrently: which two the report names varies.
    assert re.fullmatch(
        r"LaunchError kernel reduce_sum_rows_float32, threadgroup \(\d+, 0, 0\), thread "
        r"\((\d+), 0, 0\): waits at threadgroup_barrier \(reduce.metal:(\d+)\) while thread "
        r"\((\d+), 0, 0\) waits at another one \(reduce.metal:(\d+)\): every thread of a "
        r"threadgroup must reach the same barrier",
        barrier,
    ), barrier
    assert write == (
        "LaunchError kernel fill_float32, threadgroup (0, 0, 0), thread (5, 0, 0): out-of-bounds "
        "write past the end of argument 'out' at [[buffer(0)]], 20 bytes bound (at byte 20)"
    )


def test_a_kernel_file_that_replaces_nothing_is_refused(tmp_path):
    (tmp_path / "my_kernels.cu").write_text("")
    script = "import needle as ndl; print(ndl.cuda_emulated().reason)"
    (reason,) = run_script(script, NEEDLE_CUDA_KERNELS=str(tmp_path))
    assert reason == (
        "NEEDLE_CUDA_KERNELS: my_kernels.cu replace no shipped kernel file (those are "
        "elementwise.cu, gemm.cu, layout.cu, reduce.cu, rows.cu)"
    )


def test_without_a_compiler_the_devices_say_so_in_one_line(tmp_path):
    script = (
        "import needle as ndl\n"
        "for d in (ndl.cuda_emulated(), ndl.metal_emulated()): print(d.enabled(), d.reason)\n"
        "try:\n"
        "    ndl.Tensor([1.0], device=ndl.cuda_emulated())\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    lines = run_script(script, CXX="/nonexistent/g++", NEEDLE_CACHE_DIR=str(tmp_path))
    reason = "emulation needs a C++17 compiler: '/nonexistent/g++' was not found ($CXX); install "
    assert lines == [
        f"False the CUDA {reason}g++ or clang++",
        f"False the MSL {reason}g++ or clang++",
        f"device cuda_emulated() is not available: the CUDA {reason}g++ or clang++",
    ]
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "needle",
            "train",
            "--device",
            "cuda_emulated",
            "--max-batches",
            "1",
        ],
        env={**os.environ, "CXX": "/nonexistent/g++"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert train.returncode != 0 and train.stderr.strip().splitlines()[-1].startswith(
        "needle train: device cuda_emulated is not available: the CUDA emulation needs a C++17 "
        "compiler: '/nonexistent/g++' was not found ($CXX)"
    ), train.stderr


def test_needle_train_runs_on_cuda_emulated(tmp_path):
    """Two training batches of the default MLP (metal_emulated takes minutes: its GPU threads
    are OS threads; docs/emulated_devices.md has the timings)."""
    device("cuda_emulated")  # built here, so that the subprocess finds it cached
    train = subprocess.run(
        [sys.executable, "-m", "needle", "train", "--device", "cuda_emulated"]
        + ["--max-batches", "2", "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "device cuda_emulated()" in train.stdout and "done: validation accuracy" in train.stdout
