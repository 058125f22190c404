"""Data-parallel training over MPI (through mpi4py): ranks, collectives, gradient averaging and
a sampler that gives each rank its own shard of a dataset.

    import needle.distributed as dist
    dist.init()                                   # a single process when not under mpirun
    dist.broadcast_parameters(model)              # every rank starts from rank 0's weights
    sampler = dist.DistributedSampler(train_set, drop_last=True)
    loader = ndl.data.DataLoader(train_set, batch_size, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                  # the same shuffle on every rank
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.reset_grad()
            loss.backward()
            dist.allreduce_gradients(model)       # mean over ranks, in a few flat buffers
            opt.step()

With needle.apps.trainer.Trainer, ``hooks=[dist.epoch_hooks(model, sampler)]`` does the
set_epoch and allreduce_gradients calls (and sums the metrics over the ranks).

Launch with ``mpirun -n N python train.py``. Without mpi4py, or outside mpirun, everything runs
as one process (``world_size() == 1``) and the collectives return their input. Data moves
through host memory (NumPy buffers), so any device works; CUDA arrays are staged through the
host, since NDArray exposes no device pointer to a CUDA-aware MPI.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn

import numpy as np

from .autograd import Tensor
from .backend_ndarray import NDArray

__all__ = [
    "init",
    "available",
    "rank",
    "world_size",
    "is_primary",
    "barrier",
    "abort",
    "set_collective_timeout",
    "broadcast_parameters",
    "all_reduce",
    "allreduce_gradients",
    "allreduce_buffers",
    "parameter_checksum",
    "epoch_hooks",
    "DataParallelHooks",
    "DistributedSampler",
    "DistributedDataParallel",
]

INSTALL_HINT = (
    "install an MPI implementation and mpi4py, e.g. `apt-get install openmpi-bin libopenmpi-dev` "
    "(Debian/Ubuntu) and `pip install 'needle[distributed]'`, then launch with `mpirun -n N ...`"
)

# Gradients travel in flat buffers of at most this many bytes: a few large messages instead of
# one per parameter (per-message latency dominates small tensors), yet no single giant copy.
BUCKET_BYTES = 25 * 2**20

_MPI: Any = None  # the mpi4py.MPI module once init() found it
_comm: Any = None  # MPI.COMM_WORLD, or None when running as a single process
_initialized = False
_unavailable_reason: str | None = None
_collective_timeout: float | None = None  # seconds; None: collectives block as long as it takes
_timeout_prefix = "needle.distributed"

# Environment variables that MPI launchers set in every rank (Open MPI, MPICH/Hydra and Intel
# MPI through PMI, PMIx, MVAPICH): their presence means "this process is one of several".
_LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


def _launched_size() -> int:
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def init(required: bool = False) -> int:
    """Join the MPI job this process was launched in; returns the world size.

    Without mpi4py (or an MPI library it can load) this is a single process, unless a launcher
    started several ranks: then, or with `required=True`, it raises RuntimeError with install
    instructions rather than letting N copies train independently. Calling it again is free.
    """
    global _MPI, _comm, _initialized, _unavailable_reason
    if not _initialized:
        _initialized = True
        try:
            from mpi4py import MPI  # initialises MPI (MPI_Init_thread) on import
        except Exception as error:  # ImportError, or RuntimeError when libmpi cannot be loaded
            _unavailable_reason = f"{type(error).__name__}: {error}"
        else:
            _MPI, _comm = MPI, MPI.COMM_WORLD
            if _comm.Get_size() > 1:
                _abort_on_uncaught_exception()
    if _comm is None:
        if required or _launched_size() > 1:
            raise RuntimeError(
                f"needle.distributed: MPI is not available ({_unavailable_reason}); {INSTALL_HINT}"
            )
        return 1
    return _comm.Get_size()


def available() -> bool:
    """Whether mpi4py and an MPI library can be loaded (tries init() if it has not run)."""
    try:
        init()
    except RuntimeError:
        return False
    return _comm is not None


def _abort_on_uncaught_exception() -> None:
    """An exception that kills one rank must end the job: the other ranks would otherwise wait
    forever in their next collective (MPI_Finalize at exit does not release them)."""
    previous = sys.excepthook

    def abort_job(kind, value, traceback):
        previous(kind, value, traceback)
        abort(1, f"rank {rank()} raised {kind.__name__}")

    sys.excepthook = abort_job


def rank() -> int:
    """This process's index in the job, 0 .. world_size() - 1."""
    init()
    return _comm.Get_rank() if _comm is not None else 0


def world_size() -> int:
    """The number of processes in the job (1 without MPI)."""
    return init()


# DistributedSampler's `rank` argument shadows the function.
_process_rank = rank


def is_primary() -> bool:
    """True on rank 0, the rank that writes files and prints progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        _collective("Barrier")


def set_collective_timeout(seconds: float | None, prefix: str = "needle.distributed") -> None:
    """Bound how long any collective of this module (gradient and metric allreduces, broadcasts,
    barrier) may wait for the other ranks: past `seconds` a rank froze or died, so this rank
    prints one line (starting with `prefix`) and ends the job (MPI_Abort) instead of hanging
    forever. None (the default) waits without limit. Pick it above the longest stretch a rank
    spends between collectives (an epoch's validation, rank 0 saving a checkpoint)."""
    global _collective_timeout, _timeout_prefix
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"set_collective_timeout: expected positive finite seconds, got {seconds}")
    _collective_timeout = None if seconds is None else float(seconds)
    _timeout_prefix = prefix


def _wait(request) -> None:
    """Complete a non-blocking collective's request (polling Test, which also progresses it),
    or abort the job once it has waited more than the collective timeout."""
    timeout = _collective_timeout
    deadline = time.monotonic() + timeout
    pause = 0.0
    while not request.Test():
        if time.monotonic() > deadline:
            print(
                f"{_timeout_prefix}: rank {rank()}: a collective waited more than {timeout:g} s "
                "(a rank froze or died); aborting",
                file=sys.stderr,
            )
            abort(1)
        time.sleep(pause)
        pause = min(0.001, pause + 0.00005)


def _collective(name: str, *args, **kwargs) -> None:
    """_comm.<name>(...) (Allreduce, Bcast, Barrier), or with a collective timeout set its
    non-blocking form (Iallreduce, ...) completed by _wait."""
    if _collective_timeout is None:
        getattr(_comm, name)(*args, **kwargs)
    else:
        _wait(getattr(_comm, "I" + name.lower())(*args, **kwargs))


def _allreduce(buffer: np.ndarray, mpi_op) -> None:
    _collective("Allreduce", _MPI.IN_PLACE, buffer, op=mpi_op)


def _broadcast(buffer: np.ndarray, root: int) -> None:
    _collective("Bcast", buffer, root=root)


def abort(code: int = 1, reason: str | None = None) -> NoReturn:
    """End every rank of the job with exit status `code` (MPI_Abort); a plain exit without MPI."""
    if reason:
        print(f"needle.distributed: {reason}; aborting all {world_size()} ranks", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    if world_size() > 1:
        _comm.Abort(code)
    raise SystemExit(code)


# ---- collectives on host buffers ----------------------------------------------------------
_OPS = ("sum", "mean", "max", "min")


def _host_copy(x) -> np.ndarray:
    """A writable, C-contiguous NumPy copy of a Tensor, NDArray, array or number."""
    if isinstance(x, (Tensor, NDArray)):
        x = x.numpy()
    elif isinstance(x, (bool, int, np.integer)):
        x = np.int64(x)
    elif isinstance(x, float):
        x = np.float64(x)
    return np.array(x, order="C", copy=True)


def _reduce_in_place(buffer: np.ndarray, op: str) -> None:
    if world_size() > 1 and buffer.size:
        mpi_op = {"sum": _MPI.SUM, "mean": _MPI.SUM, "max": _MPI.MAX, "min": _MPI.MIN}[op]
        _allreduce(buffer, mpi_op)


def all_reduce(x, op: str = "mean"):
    """Reduce `x` over all ranks ("sum", "mean", "max" or "min"); every rank gets the result.

    `x` is a Tensor, an NDArray, a NumPy array or a number; the result has the same kind, shape,
    device and dtype (a mean of integers is a float). The input is not modified.
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    buffer = _host_copy(x)
    _reduce_in_place(buffer, op)
    if op == "mean":
        buffer = (
            buffer / world_size()
            if buffer.dtype.kind in "iub"
            else buffer / np.asarray(world_size(), dtype=buffer.dtype)
        )
    if isinstance(x, Tensor):
        return Tensor(buffer, device=x.device, dtype=x.dtype, requires_grad=False)
    if isinstance(x, NDArray):
        return NDArray(buffer, device=x.device, dtype=x.dtype)
    if isinstance(x, np.ndarray):
        return buffer
    return buffer.item()


def _buckets(arrays: Sequence[np.ndarray], bucket_bytes: int) -> list[list[int]]:
    """Indices of `arrays` grouped into runs of one dtype and at most `bucket_bytes` each (an
    array larger than that gets a bucket of its own)."""
    by_dtype: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(arrays):
        by_dtype.setdefault(a.dtype, []).append(i)
    buckets: list[list[int]] = []
    for indices in by_dtype.values():
        current: list[int] = []
        size = 0
        for i in indices:
            if current and size + arrays[i].nbytes > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += arrays[i].nbytes
        if current:
            buckets.append(current)
    return buckets


# Flat buffers kept from one step to the next: MPI on freshly allocated memory pays page faults
# (and, with some transports, registration) every time, about 3x the cost of a 1.6 MB allreduce
# between two local ranks here.
_flat_buffers: dict[tuple, np.ndarray] = {}


def _flat_collective(
    arrays: Sequence[np.ndarray],
    collective: Callable[[np.ndarray], None],
    bucket_bytes: int = BUCKET_BYTES,
) -> list[np.ndarray]:
    """Pack `arrays` into a few flat buffers, run `collective` on each in place, unpack.

    The results are views into reused buffers: copy them (as Tensor(...) does) before the next
    call.
    """
    out: list[np.ndarray] = [np.empty(0)] * len(arrays)
    for position, bucket in enumerate(_buckets(arrays, bucket_bytes)):
        dtype, size = arrays[bucket[0]].dtype, sum(arrays[i].size for i in bucket)
        flat = _flat_buffers.get((position, dtype, size))
        if flat is None:
            flat = _flat_buffers[(position, dtype, size)] = np.empty(size, dtype)
        np.concatenate([arrays[i].reshape(-1) for i in bucket], out=flat)
        collective(flat)
        offset = 0
        for i in bucket:
            n = arrays[i].size
            out[i] = flat[offset : offset + n].reshape(arrays[i].shape)
            offset += n
    return out


def _parameters(module_or_params) -> list[Tensor]:
    parameters = getattr(module_or_params, "parameters", None)
    return list(parameters() if callable(parameters) else module_or_params)


def allreduce_gradients(module_or_params, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace each parameter's gradient by its mean over all ranks; call it after backward()
    and before the optimizer step.

    Gradients are packed into flat buffers of up to `bucket_bytes` (per dtype), so a model costs
    one small message plus a few large ones per step, not one per parameter. A parameter with no
    gradient on some ranks counts as a zero gradient there; one with no gradient anywhere keeps
    `grad = None` (so the optimizer skips it, as it would in a single process).
    """
    params = _parameters(module_or_params)
    world = world_size()
    if world == 1 or not params:
        return
    # Which parameters have a gradient on some rank: ranks must agree on the buffers' layout.
    has_grad = np.array([p.grad is not None for p in params], dtype=np.int32)
    _allreduce(has_grad, _MPI.MAX)
    active = [p for p, flag in zip(params, has_grad) if flag]
    local = [
        p.grad.numpy().astype(p.dtype, copy=False)
        if p.grad is not None
        else np.zeros(p.shape, dtype=p.dtype)
        for p in active
    ]

    def mean(flat: np.ndarray) -> None:
        _allreduce(flat, _MPI.SUM)
        flat /= np.asarray(world, dtype=flat.dtype)

    for p, grad in zip(active, _flat_collective(local, mean, bucket_bytes)):
        p.grad = Tensor(grad, device=p.device, dtype=p.dtype, requires_grad=False)


def broadcast_parameters(module, root: int = 0) -> None:
    """Copy rank `root`'s parameters and buffers (BatchNorm statistics) to every rank, in place."""
    if world_size() == 1:
        return
    if not hasattr(module, "state_dict"):  # a list of Tensors
        tensors = list(module)
        values = _flat_collective([t.numpy() for t in tensors], lambda flat: _broadcast(flat, root))
        for t, value in zip(tensors, values):
            t.data = Tensor(value, device=t.device, dtype=t.dtype, requires_grad=False)
        return
    state = module.state_dict()
    names = sorted(state)  # the same order on every rank, whatever the attribute order
    values = _flat_collective([state[k] for k in names], lambda flat: _broadcast(flat, root))
    module.load_state_dict(dict(zip(names, values)), strict=False)


def allreduce_buffers(module, op: str = "mean") -> None:
    """Average the module's non-parameter tensors (BatchNorm running statistics) over ranks.

    Each rank's BatchNorm normalises with its own batch's statistics (as torch's
    DistributedDataParallel without SyncBatchNorm), so the running estimates drift apart;
    averaging them, e.g. once per epoch, keeps every rank's model, and its checksum, identical.
    """
    if world_size() == 1:
        return
    if op not in _OPS:
        raise ValueError(f"allreduce_buffers: op must be one of {_OPS}, got {op!r}")
    parameters = {name for name, _ in module.named_parameters()}
    state = module.state_dict()
    names = sorted(k for k in state if k not in parameters)
    if not names:
        return

    def reduce(flat: np.ndarray) -> None:
        _reduce_in_place(flat, op)
        if op == "mean":
            flat /= np.asarray(world_size(), dtype=flat.dtype)

    values = _flat_collective([state[k] for k in names], reduce)
    module.load_state_dict(dict(zip(names, values)), strict=False)


def parameter_checksum(module) -> str:
    """16 hex digits of the SHA-256 of every state_dict entry as float32 bytes, in sorted name
    order: equal on every rank exactly when the models are."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        value = state[name]
        digest.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


class DataParallelHooks:
    """Hooks for needle.apps.trainer.Trainer that make its loop data-parallel: average the
    gradients after every backward, sum each pass's metric totals over the ranks, average the
    BatchNorm running statistics after each training pass (so every rank keeps one model), and
    give `sampler` (a DistributedSampler) each epoch's number."""

    def __init__(self, module, sampler: DistributedSampler | None = None):
        self.module, self.sampler = module, sampler

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def after_backward(self, trainer) -> None:
        allreduce_gradients(self.module)

    def reduce_totals(self, totals: np.ndarray) -> np.ndarray:
        return all_reduce(np.asarray(totals, np.float64), op="sum")

    def after_train_epoch(self, trainer, epoch: int) -> None:
        allreduce_buffers(self.module)


def epoch_hooks(module, sampler: DistributedSampler | None = None) -> DataParallelHooks:
    """The hooks that make a Trainer over `module` data-parallel: ``Trainer(model, loss, opt,
    train_data=loader, hooks=[dist.epoch_hooks(model, sampler)])``."""
    return DataParallelHooks(module, sampler)


# ---- sharding the data ----------------------------------------------------------------------
class DistributedSampler:
    """One rank's share of a dataset's indices, for ``DataLoader(dataset, sampler=...)``.

    ``DistributedSampler(dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
    drop_last=False)``. Every rank draws the same permutation for an epoch (from `seed` and the
    epoch set by ``set_epoch``, as torch's sampler) and takes every num_replicas-th index of it,
    starting at its rank: the shards are disjoint and together hold every sample exactly once.
    Rank r's k-th batch of size B is then exactly rank r's part of the k-th batch of size
    num_replicas * B of a single process with the same permutation.

    Shard lengths differ by at most one. For training, where every step is a collective, use
    ``drop_last=True``: the (fewer than num_replicas, different every epoch) samples that do not
    divide evenly are left out, so every rank has the same number of batches.
    """

    def __init__(
        self,
        dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        num_replicas = world_size() if num_replicas is None else int(num_replicas)
        rank_ = _process_rank() if rank is None else int(rank)
        if num_replicas < 1 or not 0 <= rank_ < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank_} is not in [0, {num_replicas})")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank_
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's permutation; call it with the same value on every rank."""
        self.epoch = int(epoch)

    def _total(self) -> int:
        n = len(self.dataset)
        return n - n % self.num_replicas if self.drop_last else n

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, in order."""
        n = len(self.dataset)
        order = (
            np.random.default_rng((self.seed, self.epoch)).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        return order[: self._total()][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return max(0, -(-(self._total() - self.rank) // self.num_replicas))


class DistributedDataParallel:
    """Wraps a Module for data-parallel training: broadcasts rank 0's weights on construction;
    ``allreduce_gradients()`` after backward averages the gradients (needle has no backward
    hooks to do it implicitly). Calls and attributes go to the wrapped module, so its
    state_dict names are unchanged."""

    def __init__(self, module, bucket_bytes: int = BUCKET_BYTES):
        self.module = module
        self.bucket_bytes = bucket_bytes
        broadcast_parameters(module)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["module"], name)

    def allreduce_gradients(self) -> None:
        allreduce_gradients(self.module, self.bucket_bytes)

    def sync_buffers(self) -> None:
        allreduce_buffers(self.module)
