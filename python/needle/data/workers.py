"""The DataLoader's worker processes: each builds whole batches (NumPy arrays) ahead of the
training step; the main process wraps them in Tensors.

Batch b of an epoch goes to worker b % N and comes back on that worker's own pipe, so the main
process reads batches in order without reordering, and knows which process to watch. Workers
are forked where the platform can (Linux, macOS; spawn elsewhere): a fork starts in
milliseconds and needs no pickling of the dataset; needle's CPU thread pool is re-created in
a forked child (src/cpu/thread_pool.cc), and workers touch no device: they run the dataset's
NumPy code only.
"""

import collections
import contextlib
import functools
import mmap
import multiprocessing as mp
import os
import pickle
import queue
import selectors
import shutil
import signal
import struct
import tempfile
import threading
import time
import traceback
import weakref
from multiprocessing.connection import wait

import numpy as np

# A worker with no request for this long checks that its parent is alive: one whose parent was
# killed (SIGKILL sends no goodbye) exits instead of lingering as an orphan.
PARENT_CHECK_S = 1.0
# How long a shutdown waits for workers to finish their current batch before terminating them.
JOIN_S = 2.0


def reseed(key) -> None:
    """np.random seeded from a batch's key ((seed, epoch, batch) or (drawn seed, batch)): the
    course's transforms draw from np.random, so a batch's augmentation depends on its key
    alone, not on which process builds it or what that process built before."""
    np.random.seed(np.random.SeedSequence(key).generate_state(4))


# Messages cross the pipes as frames: the pickle's length, then the pickle, written with one
# os.write. A request through Connection.send (ForkingPickler and its layers) took the main
# process 0.047 ms, cold after a ResNet-9 step; a frame takes 0.035. Results reads whatever
# frames have arrived in one non-blocking read.
FRAME = struct.Struct("!Q")
# Raw reads and writes need the pipes' file descriptors (POSIX; Windows pipes are handles,
# sent and read with Connection's own send and recv).
RAW_PIPES = os.name == "posix"


def _post(connection, message) -> None:
    """Send `message` down `connection` (a pipe's writing end) as one frame."""
    if not RAW_PIPES:
        connection.send(message)
        return
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    frame = memoryview(FRAME.pack(len(payload)) + payload)
    while frame:  # (a pipe takes 64 KiB at a time; 10,000 indices are 80 KB)
        frame = frame[os.write(connection.fileno(), frame) :]


def _read(connection):
    """The next message on `connection` (a pipe's reading end), waiting for it; EOFError once
    the other end is closed."""
    if not RAW_PIPES:
        return connection.recv()
    (size,) = FRAME.unpack(_read_exactly(connection.fileno(), FRAME.size))
    return pickle.loads(_read_exactly(connection.fileno(), size))


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, size)
        if not part:
            raise EOFError
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class Results:
    """The main process's end of a worker's results pipe. A ready batch costs one read, and
    none when an earlier read brought its frame too. Connection.recv after multiprocessing's
    wait() took a poll and two reads (each first system call after a training step costs
    40-85 us on this 2-core VM) and wait() builds a selector per call: 0.080-0.088 ms a batch
    in a ResNet-9 step, 0.039-0.049 now."""

    def __init__(self, connection, sentinel):
        self.connection, self.sentinel, self.buffer = connection, sentinel, bytearray()
        self.selector = None
        self.blocked = 0.0  # seconds receive() waited for a message not yet sent
        if RAW_PIPES:
            os.set_blocking(connection.fileno(), False)
            self.selector = selectors.DefaultSelector()
            self.selector.register(connection.fileno(), selectors.EVENT_READ)
            self.selector.register(sentinel, selectors.EVENT_READ)

    def close(self) -> None:
        self.connection.close()
        if self.selector is not None:
            self.selector.close()

    def receive(self, timeout):
        """The next message; None when none came in `timeout` seconds (None: no limit).
        EOFError when the worker is gone (its pipe closed, or its process ended with no
        message left)."""
        if not RAW_PIPES:
            started = time.perf_counter()
            ready = wait([self.connection, self.sentinel], timeout)
            self.blocked += time.perf_counter() - started
            if ready and self.connection not in ready:
                raise EOFError
            return self.connection.recv() if ready else None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (taken := self._take()):
            try:
                chunk = os.read(self.connection.fileno(), 1 << 16)
            except BlockingIOError:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                started = time.perf_counter()
                events = self.selector.select(left)
                self.blocked += time.perf_counter() - started
                if not events:
                    return None
                if all(key.fd != self.connection.fileno() for key, _ in events):
                    raise EOFError from None  # the process ended (a child may hold its pipe)
                continue
            if not chunk:
                raise EOFError
            self.buffer += chunk
        return taken[0]

    def _take(self) -> tuple:
        """(the first whole message in the buffer,), taken out of it; () if none."""
        if len(self.buffer) < FRAME.size:
            return ()
        (size,) = FRAME.unpack_from(self.buffer)
        end = FRAME.size + size
        if len(self.buffer) < end:
            return ()
        message = pickle.loads(memoryview(self.buffer)[FRAME.size : end])
        del self.buffer[:end]
        return (message,)


def _receive_requests(requests, inbox: queue.Queue) -> None:
    # A thread, so that the main process never waits on a busy worker to take a request (one
    # of 10,000 indices is 80 KB, more than a pipe holds) or a freed buffer.
    message = ()
    while message is not None:
        try:
            message = _read(requests)
        except (OSError, EOFError):  # the main process closed its end
            message = None
        inbox.put(message)


class Buffers:
    """A worker's shared-memory batch buffers: files in a folder of /dev/shm (a tmpfs) that the
    main process maps once and reads in place, so a batch crosses over in one copy instead of
    a pickle through a 64 KiB pipe (2.4 ms per CIFAR batch of 128 against 0.1 measured)."""

    def __init__(self, folder: str, number: int):
        self.folder, self.number = folder, number
        self.maps: dict[str, mmap.mmap] = {}
        self.free: list[str] = []

    def write(self, fields: tuple) -> tuple:
        """(path, [(dtype, shape, offset)]) of a free buffer now holding `fields`."""
        layout, size = [], 0
        for field in fields:
            if field.dtype.hasobject:  # (its bytes would be pointers into this process)
                raise TypeError(
                    f"a DataLoader worker sends arrays of numbers or bools, not {field.dtype}"
                )
            layout.append((field.dtype, field.shape, size))  # (a dtype: .str loses bfloat16)
            size += -(-field.nbytes // 64) * 64  # each field 64-byte aligned
        path = next((p for p in self.free if len(self.maps[p]) >= size), None)
        if path is None:
            path = os.path.join(self.folder, f"{self.number}-{len(self.maps)}")
            self.maps[path] = _map(path, 1 << max(size - 1, 1).bit_length())  # sizes may grow
        else:
            self.free.remove(path)
        for field, (dtype, shape, offset) in zip(fields, layout):
            view = np.ndarray(shape, dtype, self.maps[path], offset)
            view[...] = field
        return path, layout

    def remove(self) -> None:
        for path in self.maps:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):  # the last one out
            os.rmdir(self.folder)


def _hold(views: tuple, released: collections.deque, path: str) -> None:
    """Append `path` to `released` once every one of `views` (NumPy arrays over its buffer)
    has been garbage: the Tensors a batch was handed out in may be the views' memory."""
    left = [len(views)]

    def gone() -> None:
        left[0] -= 1
        if left[0] == 0:
            released.append(path)

    for view in views:
        weakref.finalize(view, gone)
    if not views:
        released.append(path)


def _drain(released: collections.deque) -> tuple:
    """What `released` holds, taken out (popleft is atomic: a finalizer may run meanwhile)."""
    out = []
    with contextlib.suppress(IndexError):
        while True:
            out.append(released.popleft())
    return tuple(out)


def _map(path: str, size: int = 0) -> mmap.mmap:
    """`path` mapped shared (created with `size` bytes when size > 0)."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if size else 0), 0o600)
    try:
        if size:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size or os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _worker_loop(number, fetch, requests, results, parent, inherited, folder):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent decides
    # SCHED_BATCH (Linux): a worker woken by a request no longer preempts the training process
    # that sent it, on its core, while keeping its fair share of the CPU. On 2 cores busy with a
    # ResNet-9 step, sending a request took 0.76 ms of the main process's time, 0.13 after.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    for connection in inherited:  # the other workers' ends of their pipes, copied by fork
        connection.close()
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_receive_requests, args=(requests, inbox), daemon=True).start()
    buffers = Buffers(folder, number)
    try:
        while True:
            try:
                message = inbox.get(timeout=PARENT_CHECK_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if message is None:
                return
            if isinstance(message, list):  # buffers the main process is done with
                buffers.free.extend(message)
                continue
            *request, freed = message
            buffers.free.extend(freed)
            _post(results, _build(fetch, buffers, number, *request))
    except (OSError, ValueError):  # the main process closed the results pipe
        return
    finally:
        buffers.remove()


def _build(fetch, buffers: Buffers, number: int, tag: int, batch: int, key, indices):
    try:
        if key is not None:
            reseed(key + (batch,))
        return tag, True, buffers.write(tuple(fetch(np.frombuffer(indices, np.int64).copy())))
    except Exception as error:
        return tag, False, _error_report(error, number, batch)


def _error_report(error: BaseException, number: int, batch: int):
    """(exception class, message) for the main process; the class only if it pickles."""
    text = (
        f"{type(error).__name__}: {error}\n\nraised in DataLoader worker {number} (pid "
        f"{os.getpid()}) while building batch {batch}:\n{traceback.format_exc()}"
    )
    try:
        pickle.dumps(type(error))
        return type(error), text
    except Exception:
        return RuntimeError, text


def _rebuild(kind: type, text: str) -> BaseException:
    try:
        return kind(text)
    except Exception:  # a constructor that wants other arguments
        return RuntimeError(text)


def _shutdown(workers: list, maps: dict, folder: str) -> None:
    """Ask each worker to stop, wait up to JOIN_S for all, terminate the rest, reap them all,
    and remove their buffers."""
    for _, requests, results in workers:
        for step in (functools.partial(_post, requests, None), requests.close, results.close):
            with contextlib.suppress(OSError, ValueError):
                step()
    deadline = time.monotonic() + JOIN_S
    for process, _, _ in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join()
    workers.clear()
    # Dropped, not closed: batches still held are Tensors over these mappings (the views keep
    # theirs alive; closing would unmap memory under them). The files go; a mapping outlives
    # its file, and is unmapped with its last view.
    maps.clear()
    shutil.rmtree(folder, ignore_errors=True)


class WorkerPool:
    """N worker processes running `fetch(indices)` (the dataset's batch as NumPy fields), each
    with up to `prefetch` of its batches requested ahead. One epoch at a time: start(), then
    next() for batches 0, 1, ... in order. Shut down by close(), or when garbage-collected."""

    def __init__(self, fetch, num_workers: int, prefetch: int, timeout=None):
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.prefetch, self.timeout, self.tag = prefetch, timeout, 0
        self.workers: list = []
        # Per worker, its buffers whose batch is gone (_hold), to go back with its next request.
        self.released: list[collections.deque] = [collections.deque() for _ in range(num_workers)]
        self.maps: dict[str, mmap.mmap] = {}  # the workers' buffers, mapped here
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.folder = tempfile.mkdtemp(prefix=f"needle-data-{os.getpid()}-", dir=shm)
        self._closer = weakref.finalize(self, _shutdown, self.workers, self.maps, self.folder)
        for number in range(num_workers):
            requests, to_worker = context.Pipe(duplex=False)
            from_worker, results = context.Pipe(duplex=False)
            inherited = [c for _, r, s in self.workers for c in (r, s)]
            process = context.Process(
                target=_worker_loop,
                args=(number, fetch, requests, results, os.getpid(), inherited, self.folder),
                name=f"needle-data-{number}",
                daemon=True,
            )
            process.start()
            requests.close()  # the worker's ends: EOF reaches the main process when it dies
            results.close()
            self.workers.append((process, to_worker, Results(from_worker, process.sentinel)))

    def close(self) -> None:
        self._closer()

    @property
    def blocked(self) -> float:
        """Seconds next() has waited for batches their workers had not yet sent."""
        return sum(results.blocked for _, _, results in self.workers)

    def start(self, batches: list, key) -> None:
        """A new epoch: `batches` (index arrays) in order, `key` the seed of their np.random
        (None: not reseeded). Batches still on their way from an unfinished epoch are dropped."""
        self.tag += 1
        self.batches, self.key, self.sent, self.received = batches, key, 0, 0
        for _ in range(min(len(batches), self.prefetch * len(self.workers))):
            self._request()

    def _request(self) -> None:
        """Ask for the next batch, handing back what its worker's batches released."""
        batch, number = self.sent, self.sent % len(self.workers)
        indices = np.asarray(self.batches[batch], dtype=np.int64).tobytes()  # (pickles in 2 us)
        message = (self.tag, batch, self.key, indices, _drain(self.released[number]))
        self._send(number, message)
        self.sent += 1

    def _send(self, number: int, message) -> None:
        try:
            _post(self.workers[number][1], message)
        except OSError:  # its end of the pipe is closed: it died
            self._died(number, self.received)

    def next(self, wrap):
        """wrap(fields) of the next batch, its fields NumPy views of a worker's buffer, which
        wrap may copy or keep (Tensors over them: the buffer goes back to its worker once every
        view is gone). A worker's exception is raised here with its traceback; a worker that
        died or took longer than `timeout` raises RuntimeError."""
        batch = self.received
        number = batch % len(self.workers)
        while True:  # (dropping what an epoch left unfinished had asked for)
            tag, ok, payload = self._receive(number, batch)
            if tag == self.tag:
                break
            if ok:
                self._send(number, [payload[0]])
        self.received += 1
        if not ok:
            raise _rebuild(*payload)
        fields = self._fields(payload)
        try:
            return wrap(fields)
        finally:
            _hold(fields, self.released[number], payload[0])
            del fields  # (copied: the buffer is released here)
            # What this worker's batches released goes back with its next request (batch +
            # prefetch * N: the same worker), in one message: one wake-up (which on 2 busy cores
            # can cost the main process a time slice). A worker makes a new buffer when none
            # is free.
            if self.sent < len(self.batches):
                self._request()
            elif freed := _drain(self.released[number]):
                self._send(number, list(freed))

    def _fields(self, payload) -> tuple:
        path, layout = payload
        if path not in self.maps:
            self.maps[path] = _map(path)
        return tuple(
            np.ndarray(shape, dtype, self.maps[path], offset) for dtype, shape, offset in layout
        )

    def _receive(self, number: int, batch: int):
        process, _, results = self.workers[number]
        try:
            message = results.receive(self.timeout)
        except EOFError:
            self._died(number, batch)
        if message is None:
            raise RuntimeError(
                f"DataLoader worker {number} (pid {process.pid}) took more than "
                f"timeout={self.timeout} s to build batch {batch}"
            )
        return message

    def _died(self, number: int, batch: int):
        process = self.workers[number][0]
        process.join(JOIN_S)
        code = process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        raise RuntimeError(
            f"DataLoader worker {number} (pid {process.pid}) died ({how}) while building batch "
            f"{batch}; if it was killed for memory, use fewer workers or a smaller batch"
        )
