"""The C++ CPU backend used from several Python threads at once.

Its primitives release the GIL around native work of more than a few microseconds, so
Python threads that use needle run in parallel, and its thread pool is then called by
several threads at once (it serves them in turn). Checked here: 6 threads computing a mix
of NDArray ops (matmuls, reductions, elementwise, compacts of strided views) get results
bitwise equal to the same computations done serially, and a Python thread keeps running
while another is inside a long native matmul.
"""

import sys
import threading
import time

import numpy as np
import pytest

from needle import backend_ndarray as nd

try:
    from needle.backend_ndarray import ndarray_backend_cpu  # noqa: F401
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

THREADS = 6
ROUNDS = 75  # x 6 results per round = 450 results per thread, 2,700 in all


@pytest.fixture
def device():
    return nd.cpu()


@pytest.fixture
def restore_threads():
    before = nd.get_num_threads()
    yield
    nd.set_num_threads(before)


def make_inputs(seed: int, device):
    rng = np.random.default_rng(seed)
    # Large enough that every primitive releases the GIL and most split across the pool.
    a = rng.standard_normal((96, 160)).astype(np.float32)
    b = rng.standard_normal((160, 128)).astype(np.float32)
    c = rng.standard_normal((8, 64, 300)).astype(np.float64)
    return [nd.array(x, device=device) for x in (a, b, c)]


def compute(inputs, r: int) -> list[np.ndarray]:
    """Six results of a mix of ops; r varies them between rounds."""
    a, b, c = inputs
    s = 1.0 + r / 64
    ab = a @ b
    t = c.permute((2, 0, 1))  # a strided view: compact() gathers it
    return [
        ab.numpy(),
        (a.permute((1, 0)) @ (a * s)).numpy(),
        c.sum(axis=1).numpy(),
        ((t.compact() + s) * t).max(axis=0).numpy(),
        (ab.exp() / (ab.exp() + 1.0)).sum(axis=None).numpy(),
        (c[:, ::2, 1:].compact() - c[:, 1::2, :-1]).numpy(),
    ]


def test_six_threads_match_serial(device, restore_threads):
    nd.set_num_threads(2)
    inputs = [make_inputs(seed, device) for seed in range(THREADS)]
    expected = [[compute(inputs[i], r) for r in range(ROUNDS)] for i in range(THREADS)]
    got: list[list] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for r in range(ROUNDS):
                got[i].append(compute(inputs[i], r))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    results = wrong = 0
    for i in range(THREADS):
        assert len(got[i]) == ROUNDS
        for r in range(ROUNDS):
            for x, y in zip(got[i][r], expected[i][r], strict=True):
                results += 1
                wrong += not (
                    x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                )
    assert (results, wrong) == (2700, 0)


def test_python_thread_runs_during_matmul(device, restore_threads):
    """Another thread progresses while one is inside a native matmul.

    The counting thread stamps the time every 100 loop iterations. Were the GIL held during
    the matmul, it could not stamp between the matmul's start and end (at most in the last
    switch interval, when the main thread gives up the GIL before reading the clock): a
    stamp in the first half of the interval shows that the GIL was released.
    """
    nd.set_num_threads(1)  # one core for the matmul, one for the counter on a 2-core machine
    rng = np.random.default_rng(0)
    n = 1200  # ~0.1-0.3 s on one core
    a = nd.array(rng.standard_normal((n, n)), dtype="float64", device=device)
    b = nd.array(rng.standard_normal((n, n)), dtype="float64", device=device)
    a @ b  # warm up
    stamps: list[float] = []
    stop = threading.Event()
    started = threading.Event()

    def count() -> None:
        i = 0
        started.set()
        while not stop.is_set():
            i += 1
            if i % 100 == 0:
                stamps.append(time.perf_counter())

    counter = threading.Thread(target=count)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    counter.start()
    started.wait()
    try:
        for _ in range(5):  # a few tries: the first may be starved on a loaded machine
            t0 = time.perf_counter()
            a @ b  # one native call: between calls the GIL changes hands anyway
            t1 = time.perf_counter()
            early = [t for t in stamps if t0 < t < t0 + (t1 - t0) / 2]
            if len(early) >= 5:
                break
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(old_interval)
    assert len(early) >= 5, f"{len(early)} stamps in the first half of {t1 - t0:.3f} s"
