"""DataLoader(num_workers=N): the batches of N = 0 for every N, worker errors raised with their
traceback, and shutdown without orphans (every exit path), each test under a time limit."""

import gc
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from needle import data

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="checks child processes through /proc (Linux)"
)


@pytest.fixture(autouse=True)
def time_limit():
    """A hang fails the test (pytest-timeout is not a dependency) instead of blocking CI."""

    def expire(signum, frame):
        raise TimeoutError("test took more than 60 s: a DataLoader hang?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def children() -> set:
    """Pids of this process's child processes, zombies included (read from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(entry))
    return found


def assert_no_workers(before=frozenset()):
    assert not mp.active_children()
    assert children() <= set(before)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"needle-data-{os.getpid()}-")]


class Images(data.Dataset):
    """uint8 images (H, W, C) through the course's transforms, one item at a time."""

    def __init__(self, n=50, transforms=None, fail_at=None, delay=0.0, error=ValueError):
        super().__init__(transforms)
        self.images = np.random.default_rng(0).integers(0, 256, (n, 8, 6, 3), dtype=np.uint8)
        self.fail_at, self.delay, self.error = fail_at, delay, error

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        time.sleep(self.delay)
        if i == self.fail_at:
            raise self.error(f"item {i} is broken")
        return self.apply_transforms(self.images[i]), np.int64(i)

    def get_items(self, indices):  # one item at a time, as a dataset of files would
        return data.data_basic.stack_items([self[int(i)] for i in indices])


def augmented(n=50, **kwargs):
    return Images(n, [data.RandomCrop(2), data.RandomFlipHorizontal()], **kwargs)


def epochs(loader, count=2):
    return [[tuple(t.numpy() for t in batch) for batch in loader] for _ in range(count)]


def assert_same(a, b):
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b)
        for batch_a, batch_b in zip(epoch_a, epoch_b):
            for x, y in zip(batch_a, batch_b):
                assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize(
    "options",
    [
        dict(batch_size=7, shuffle=True),
        dict(batch_size=8, drop_last=True),
        dict(batch_size=5, sampler=list(range(49, -1, -3))),
    ],
)
def test_every_worker_count_gives_the_batches_of_none(options):
    ds = augmented()
    state = np.random.get_state()
    reference = epochs(data.DataLoader(ds, **options, seed=3))
    # The loader restores np.random after reseeding it for each batch (N = 0 with a seed).
    assert np.array_equal(np.random.get_state()[1], state[1])
    for n in (1, 2, 3):
        assert_same(epochs(data.DataLoader(ds, **options, num_workers=n, seed=3)), reference)
    # The test can fail: the transforms moved pixels, and the two epochs differ.
    plain = np.stack([ds.images[i] for i in reference[0][0][1]])
    assert not np.array_equal(reference[0][0][0], plain)
    assert not np.array_equal(reference[0][0][0], reference[1][0][0])
    assert_no_workers()


def test_without_a_seed_zero_workers_is_the_course_loader_and_workers_agree():
    ds = augmented(20)
    np.random.seed(4)
    got = epochs(data.DataLoader(ds, 6, shuffle=True), 1)[0]
    np.random.seed(4)  # the course: a permutation, then each image's draws in batch order
    order = np.random.permutation(20)
    crop, flip = ds.transforms
    for batch, start in zip(got, range(0, 20, 6)):
        indices = order[start : start + 6]
        assert np.array_equal(batch[1], indices)
        assert np.array_equal(batch[0], np.stack([flip(crop(ds.images[i])) for i in indices]))
    # With workers and no seed, each epoch's seed is drawn from np.random: N = 1 and 2 agree.
    runs = []
    for n in (1, 2):
        np.random.seed(4)
        runs.append(epochs(data.DataLoader(ds, 6, shuffle=True, num_workers=n)))
    assert_same(*runs)


def test_worker_error_is_raised_with_its_traceback_and_stops_the_workers():
    loader = data.DataLoader(Images(fail_at=13), 4, num_workers=2)
    got = []
    with pytest.raises(ValueError) as caught:
        for batch in loader:
            got.append(batch)
    message = str(caught.value)
    assert len(got) == 3  # batches 0-2 arrive; batch 3 holds item 13
    assert "item 13 is broken" in message and "DataLoader worker 1 (pid" in message
    assert "while building batch 3" in message and "in __getitem__" in message
    assert 'raise self.error(f"item {i} is broken")' in message  # the worker's traceback
    assert_no_workers()
    with pytest.raises(ValueError, match="item 13"):  # a new epoch: new workers, the same error
        list(loader)
    assert_no_workers()


class TwoArgumentError(Exception):
    def __init__(self, code, text):
        super().__init__(f"{code}: {text}")


def test_an_error_that_cannot_be_rebuilt_becomes_runtime_error():
    loader = data.DataLoader(Images(fail_at=0, error=lambda m: TwoArgumentError(7, m)), 4)
    with pytest.raises(TwoArgumentError):  # in process: the error itself
        next(iter(loader))
    loader = data.DataLoader(loader.dataset, 4, num_workers=1)
    with pytest.raises(RuntimeError, match=r"TwoArgumentError: 7: item 0 is broken"):
        next(iter(loader))
    strings = data.NDArrayDataset(np.array(["a", "b"], dtype=object))  # pointers: refused
    with pytest.raises(TypeError, match="arrays of numbers or bools, not object"):
        next(iter(data.DataLoader(strings, 2, num_workers=1)))
    assert_no_workers()


def test_workers_stop_at_the_end_of_an_epoch_at_break_and_when_collected():
    loader = data.DataLoader(augmented(), 5, num_workers=2)
    assert len(list(loader)) == 10
    assert_no_workers()  # exhausted: stopped
    for _ in loader:
        break
    assert len(children()) == 2  # a break leaves them for the next epoch or collection
    del loader
    gc.collect()
    assert_no_workers()


def test_persistent_workers_live_across_epochs_until_collected():
    options = dict(batch_size=5, shuffle=True, seed=1)
    reference = epochs(data.DataLoader(augmented(), **options), 5)
    loader = data.DataLoader(augmented(), **options, num_workers=2, persistent_workers=True)
    got, pids = [], []
    for _ in range(3):
        got += epochs(loader, 1)
        pids.append(children())
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]
    for i, _ in enumerate(loader):  # an unfinished epoch: its prefetched batches are dropped
        if i == 2:
            break
    got += epochs(loader, 1)
    assert_same(got, reference[:3] + reference[4:])
    assert children() == pids[0]
    del loader
    gc.collect()
    assert_no_workers()


def test_batches_held_as_tensors_keep_their_values_and_buffers_come_back():
    """On the C++ CPU backend a worker's batch reaches the loop as Tensors over its shared
    buffer, not copied: the buffer may only be reused once they are gone. Holding a whole
    epoch of Tensors (a worker reusing a held buffer would overwrite earlier batches), then
    after a pool has shut down, the values are the loader's without workers; batches that are
    dropped give their buffers back, so a worker needs only prefetch + 1 of them."""
    import needle as ndl
    from needle.backend_selection import BACKEND

    shares = BACKEND != "np" and ndl.cpu().enabled()  # (else copied, buffers back at once)
    options = dict(batch_size=5, shuffle=True, seed=4)
    reference = epochs(data.DataLoader(augmented(), **options), 1)[0]
    loader = data.DataLoader(augmented(), **options, num_workers=2, persistent_workers=True)
    before = ndl.cpu().memory_stats()["allocations"] if shares else 0
    held = list(loader)
    if shares:  # images and labels over the workers' memory: no Array allocated
        assert ndl.cpu().memory_stats()["allocations"] == before
        assert len(os.listdir(loader._pool.folder)) == len(held)  # a buffer per held batch
    del held
    for _ in range(2):
        for _ in loader:  # dropped at once
            pass
    if shares:
        assert len(os.listdir(loader._pool.folder)) == len(reference)  # reused, none new
    loader = data.DataLoader(augmented(), **options, num_workers=2)
    held = list(loader)
    assert_no_workers()  # the pool is gone; its mappings live on under the held Tensors
    gc.collect()
    assert_same([[tuple(t.numpy() for t in batch) for batch in held]], [reference])
    short = data.DataLoader(augmented(), batch_size=5, num_workers=2, persistent_workers=True)
    for _ in short:
        pass
    per_worker = len(os.listdir(short._pool.folder)) / 2
    # the batches asked for ahead, and (shared) the one the loop variable still holds
    assert per_worker == short.prefetch_factor + shares


def test_ctrl_c_while_waiting_for_a_batch_stops_the_workers():
    # A first batch that takes 20 s: the signal comes while the main process waits for it,
    # however late a loaded machine runs the timer thread (0.2 s a batch once failed in CI).
    loader = data.DataLoader(Images(delay=5.0), 4, num_workers=2)
    # Python's own handler, whatever an earlier test of the suite left installed (in the full
    # run the signal was once swallowed: the 20 s batch came back instead of the interrupt).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        iterator = iter(loader)
        # To the main thread, as a terminal's Ctrl-C reaches it: sent to the process from the
        # timer's thread, the signal may land in that thread and leave the main one waiting.
        main = threading.main_thread().ident
        timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            next(iterator)
        timer.join()
        assert_no_workers()  # at once, without waiting for the loader to be collected
        loader.dataset.delay = 0.0
        assert len(next(iter(loader))[0]) == 4  # and the next epoch starts new ones
    finally:
        signal.signal(signal.SIGINT, handler)
        loader.close()


def test_killed_worker_and_timeout_raise_instead_of_hanging():
    loader = data.DataLoader(Images(delay=0.05), 2, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    victim = loader._pool.workers[1][0].pid
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=rf"worker 1 \(pid {victim}\) died \(killed by SIGKILL"):
        while True:
            next(iterator)
    assert_no_workers()
    slow = data.DataLoader(Images(delay=1.0), 1, num_workers=1, timeout=0.3)
    with pytest.raises(RuntimeError, match=r"took more than timeout=0.3 s to build batch 0"):
        next(iter(slow))
    assert_no_workers()


def test_blocked_seconds_counts_only_waits_for_batches_not_yet_built():
    # Each batch of 2 items takes a worker >= 0.1 s; one batch requested ahead.
    slow = data.DataLoader(Images(8, delay=0.05), 2, num_workers=1, prefetch_factor=1, seed=0)
    iterator = iter(slow)
    started = time.perf_counter()
    next(iterator)
    assert 0.09 <= slow.blocked_seconds <= time.perf_counter() - started
    # A batch whose frame is in the pipe when next() asks: received, never waited for.
    results = slow._pool.workers[0][2].connection
    assert results.poll(30)  # batch 1, built
    before = slow.blocked_seconds
    next(iterator)
    assert slow.blocked_seconds == before
    # Without workers, next() builds the batch: all of it is waiting for data.
    here = data.DataLoader(Images(8, delay=0.05), 2)
    started = time.perf_counter()
    next(iter(here))
    assert 0.09 <= here.blocked_seconds <= time.perf_counter() - started
    slow.close()
    assert_no_workers()


def test_workers_of_a_killed_main_process_exit():
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = {[os.path.dirname(__file__)]!r}
        from test_data_workers import Images
        from needle import data
        loader = data.DataLoader(Images(), 4, num_workers=2, persistent_workers=True)
        next(iter(loader))
        print(*[w[0].pid for w in loader._pool.workers], flush=True)
        time.sleep(60)
        """
    )
    main = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in main.stdout.readline().split()]
    assert len(pids) == 2
    main.kill()
    main.wait()
    deadline = time.monotonic() + 10

    def alive(pid):  # a zombie waiting for init to reap it has exited
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, pids))


def test_worker_options_are_checked():
    ds = augmented()
    for bad in (
        dict(num_workers=-1),
        dict(num_workers=1.5),
        dict(num_workers=1, prefetch_factor=0),
        dict(persistent_workers=True),
        dict(seed=-1),
        dict(seed=1, generator=2),
        dict(num_workers=1, timeout=0),
    ):
        with pytest.raises(ValueError, match="DataLoader"):
            data.DataLoader(ds, 4, **bad)


def test_transform_batch_gives_the_images_of_the_per_image_transforms():
    images = np.random.default_rng(1).integers(0, 256, (40, 9, 7, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)  # CIFAR's
    makers = [
        lambda: [data.RandomCrop(3), data.RandomFlipHorizontal(0.4)],
        lambda: [data.RandomFlipHorizontal(generator=2), data.RandomCrop(1, generator=3)],
        lambda: [data.RandomCrop(8)],  # shifts past the image's width: all zeros
        lambda: [data.RandomCrop(2), lambda x: x[::-1]],  # a function: image by image
    ]
    for make, batch in itertools.product(makers, (images, chw)):
        np.random.seed(8)
        transforms = make()
        expected = []
        for x in batch:
            for transform in transforms:
                x = transform(x)
            expected.append(x)
        np.random.seed(8)
        got = data.transform_batch(make(), batch)
        assert got.dtype == images.dtype and np.array_equal(got, np.stack(expected))
        assert not np.array_equal(got, images)


def test_messages_cross_the_pipes_whole_and_in_order_and_an_ended_worker_is_seen():
    """The frames workers and the main process exchange (workers._post, _read, Results):
    messages of every size arrive whole and in order, several frames per read or one frame
    over several; a partial frame waits for its rest; a closed pipe, and a process ended while
    its pipe is still held (the sentinel), raise EOFError; nothing arriving times out."""
    from needle.data import workers

    # (None is the stop request; a result is never None, which receive returns on timeout)
    messages = [(0, True, ("a", [])), list(range(30_000)), ("x" * 200_000,), (), None]
    results_sent = messages[:-1]
    reading, writing = mp.Pipe(duplex=False)
    sentinel_reading, sentinel_writing = os.pipe()  # a worker process's sentinel, standing in
    results = workers.Results(reading, sentinel_reading)
    try:
        # (frames over 64 KiB fill the pipe: a writer thread waits for the reader)
        sender = threading.Thread(target=lambda: [workers._post(writing, m) for m in results_sent])
        sender.start()
        assert [results.receive(10) for _ in results_sent] == results_sent
        sender.join()
        assert results.receive(0.05) is None

        frame = bytearray()
        for message in ("first", "second"):
            payload = pickle.dumps(message)
            frame += workers.FRAME.pack(len(payload)) + payload
        os.write(writing.fileno(), frame[:5])  # part of the first frame's length
        assert results.receive(0.05) is None
        os.write(writing.fileno(), frame[5:])  # the rest of both: one read, two messages
        assert (results.receive(1), results.receive(0)) == ("first", "second")

        os.close(sentinel_writing)  # the process ended; its results pipe still held elsewhere
        with pytest.raises(EOFError):
            results.receive(10)
    finally:
        results.close()
        os.close(sentinel_reading)
    writing.close()

    reading, writing = mp.Pipe(duplex=False)
    sender = threading.Thread(target=lambda: [workers._post(writing, m) for m in messages])
    sender.start()
    assert [workers._read(reading) for _ in messages] == messages
    sender.join()
    writing.close()
    with pytest.raises(EOFError):
        workers._read(reading)
    reading.close()

    reading, writing = mp.Pipe(duplex=False)
    sentinel_reading, sentinel_writing = os.pipe()
    results = workers.Results(reading, sentinel_reading)
    workers._post(writing, "last")
    writing.close()  # the worker's end closed, its process (the sentinel) not yet ended
    assert results.receive(1) == "last"
    with pytest.raises(EOFError):
        results.receive(10)
    results.close()
    os.close(sentinel_reading)
    os.close(sentinel_writing)
