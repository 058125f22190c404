"""The C++ CPU backend's buffer accounting and cache (ndl.cpu().memory_stats(), empty_cache()):
live bytes go up and down with Arrays, a freed large buffer is handed out again, the cache
stays within the peak, and a training loop's memory is flat after its first steps."""

import numpy as np
import pytest

import needle as ndl
from needle.backend_ndarray import NDArray

CPU = ndl.cpu()
pytestmark = pytest.mark.skipif(not CPU.enabled(), reason="the C++ CPU backend is not built")
LARGE = (1024, 1024 + 16)  # 4.06 MiB of float32: past the huge-page threshold (4 MiB)
# 512 KiB and 256 KiB: under it, where glibc maps and unmaps blocks itself (its mmap threshold
# is 128 KiB); the cache keeps them too. 64 KiB stays with malloc.
MEDIUM, MEDIUM_HALF, SMALL = (256, 512), (128, 512), (128, 128)


def test_stats_follow_live_arrays():
    before = CPU.memory_stats()
    assert set(before) == {"current", "peak", "cached", "allocations", "reused"}
    a = NDArray.make((1000,), device=CPU)
    during = CPU.memory_stats()
    assert during["current"] - before["current"] == 4032  # 4000 bytes rounded to 64
    assert during["allocations"] == before["allocations"] + 1
    assert during["peak"] >= during["current"]
    del a
    assert CPU.memory_stats()["current"] == before["current"]


@pytest.mark.parametrize("shape", [LARGE, MEDIUM], ids=["4MiB", "512KiB"])
def test_a_freed_buffer_is_reused_with_new_values(shape):
    CPU.empty_cache()
    first = NDArray(np.ones(shape, np.float32), device=CPU)
    del first
    cached = CPU.memory_stats()
    assert cached["cached"] >= np.prod(shape) * 4
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    second = NDArray(values, device=CPU)
    after = CPU.memory_stats()
    assert after["reused"] == cached["reused"] + 1
    assert after["cached"] < cached["cached"]
    np.testing.assert_array_equal(second.numpy(), values)
    del second
    CPU.empty_cache()
    assert CPU.memory_stats()["cached"] == 0


def test_buffers_are_cached_by_size_and_small_ones_left_to_malloc():
    CPU.empty_cache()
    medium = NDArray.make(MEDIUM, device=CPU)
    del medium
    stats = CPU.memory_stats()
    assert stats["cached"] == np.prod(MEDIUM) * 4
    half = NDArray.make(MEDIUM_HALF, device=CPU)  # another size: a new buffer
    assert CPU.memory_stats()["reused"] == stats["reused"]
    del half
    small = NDArray.make(SMALL, device=CPU)
    del small
    assert CPU.memory_stats()["cached"] == stats["cached"] + np.prod(MEDIUM_HALF) * 4
    CPU.empty_cache()


def test_cache_stays_within_the_peak():
    arrays = [NDArray.make(LARGE, device=CPU) for _ in range(3)]
    del arrays
    stats = CPU.memory_stats()
    assert stats["cached"] <= stats["peak"]


def test_training_memory_is_flat():
    """After a few steps a training loop allocates from the cache and holds the same bytes."""
    np.random.seed(0)
    model = ndl.nn.Sequential(ndl.nn.Linear(2048, 1024), ndl.nn.ReLU(), ndl.nn.Linear(1024, 10))
    opt = ndl.optim.SGD(model.parameters(), lr=0.01)
    x = ndl.Tensor(np.random.standard_normal((1024, 2048)).astype(np.float32))
    y = ndl.Tensor(np.random.randint(0, 10, 1024), dtype="int64")
    current = []
    for _ in range(8):
        opt.reset_grad()
        ndl.nn.SoftmaxLoss()(model(x), y).backward()
        opt.step()
        current.append(CPU.memory_stats()["current"])
    assert len(set(current[3:])) == 1, current
