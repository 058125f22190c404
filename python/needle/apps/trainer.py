"""The training loop: one `Trainer`, built with its model, loss, optimizer, data and hooks; also
gradient clipping, truncated-BPTT batches and atomic checkpoints. `needle train`, the course
helpers in `apps/` and the data-parallel tests all train through it.

    trainer = Trainer(model, nn.SoftmaxLoss(), opt, train_data=loader, val_data=val_loader,
                      hooks=[needle.distributed.epoch_hooks(model, sampler)])
    results = trainer.fit(epochs)   # [EpochResult(epoch, train=(acc, loss), val=..., seconds)]
    accuracy, loss = trainer.run_epoch(train=False)   # or one pass at a time

A hook is any object with some of these methods; the Trainer calls them, in the order the hooks
were given, at these points:

    on_epoch_start(trainer, epoch)          before an epoch's training pass (seeds, sampler epoch)
    after_backward(trainer)                 after the backward of each update's last micro-batch,
                                            before clipping and the update
    after_step(trainer)                     after each update (trainer.steps counts them)
    reduce_totals(totals) -> totals         a pass's [correct, loss sum, count], e.g. summed
                                            over ranks, before the means are taken
    after_train_epoch(trainer, epoch)       between an epoch's training and validation passes
    on_epoch_end(trainer, result)           after validation (an EpochResult): logs, checkpoints
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import needle as ndl
from needle import amp, nn
from needle.autograd import Tensor, no_grad
from needle.serialization import atomic_write, remove_stale_temporaries

__all__ = [
    "Trainer",
    "EpochResult",
    "SequenceBatches",
    "clip_grad_norm",
    "detach_state",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "remove_stale_temporaries",
    "CheckpointError",
    "TrainingDiverged",
]


class TrainingDiverged(FloatingPointError):
    """A loss or gradient became NaN or infinite: the run diverged (e.g. too high a learning
    rate). The Trainer stops before any hook sees the epoch, so no checkpoint holds its state."""


class CheckpointError(ValueError):
    """A checkpoint file that is not one save_checkpoint wrote, or is damaged, or does not fit
    the model; the message names the file."""


# --precision: the 16-bit dtype forward runs in under autocast (None: float32 throughout).
PRECISIONS: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}

HOOK_METHODS = (
    "on_epoch_start",
    "after_backward",
    "after_step",
    "reduce_totals",
    "after_train_epoch",
    "on_epoch_end",
)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most `max_norm` (as torch's
    clip_grad_norm_); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    total = float(
        np.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum()) for p in params))
    )
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        with no_grad():
            for p in params:
                p.grad = p.grad.detach() * scale
    return total


def detach_state(h):
    """Cut a recurrent state (a Tensor, a tuple of them, or None) from the previous batch's graph
    (truncated backpropagation through time)."""
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return type(h)(detach_state(x) for x in h)
    return h.detach()


class SequenceBatches:
    """Truncated-BPTT windows over `batchify`'d ids (nbatch, batch): (x (L, batch), y (L*batch,))
    pairs, L = seq_len except maybe the last, as Tensors of integer ids (`dtype`, int64 by
    default). A Trainer passes the model's state from one window to the next, detached."""

    def __init__(self, batches: np.ndarray, seq_len: int, device=None, dtype="int64"):
        self.batches, self.seq_len, self.device, self.dtype = batches, seq_len, device, dtype

    def __len__(self) -> int:
        return len(range(0, len(self.batches) - 1, self.seq_len))

    def __iter__(self):
        from needle.data import get_batch

        for i in range(0, len(self.batches) - 1, self.seq_len):
            yield get_batch(self.batches, i, self.seq_len, device=self.device, dtype=self.dtype)


@dataclass
class EpochResult:
    """One epoch of `Trainer.fit`: (accuracy, mean loss) of the training and validation passes
    (val None without validation data), the wall time of both, and the training pass's
    `data_wait` and `data_blocked` (see Trainer.data_wait)."""

    epoch: int
    train: tuple[float, float]
    val: tuple[float, float] | None
    seconds: float
    data_wait: tuple[float, float] = (0.0, 0.0)
    data_blocked: tuple[float, float] = (0.0, 0.0)


def _timed(data, total: int, steps: list):
    """The first `total` items of `data`, appending for each (seconds spent waiting for it,
    seconds since the previous one was handed out: the step that used it plus this wait, the
    part of the wait the item was not ready: data.blocked_seconds' growth where `data` counts
    it, as a DataLoader does, else the whole wait) to `steps`."""
    iterator, last = iter(itertools.islice(data, total)), time.perf_counter()
    while True:
        start = time.perf_counter()
        blocked = getattr(data, "blocked_seconds", None)
        try:
            item = next(iterator)
        except StopIteration:
            return
        now = time.perf_counter()
        wait = now - start
        if blocked is not None:
            blocked = min(wait, data.blocked_seconds - blocked)
        steps.append((wait, now - last, wait if blocked is None else blocked))
        last = now
        yield item


def _wait_shares(steps: list, column: int) -> tuple[float, float]:
    """(the share of the pass, the largest share of one step after the first) of `_timed`'s
    `steps` that their `column` (0: the wait, 2: its blocked part) took."""
    elapsed = max(sum(step for _, step, _ in steps), 1e-9)
    largest = max((waits[column] / max(waits[1], 1e-9) for waits in steps[1:]), default=0.0)
    return sum(waits[column] for waits in steps) / elapsed, largest


def _progress(iterable, total: int, description: str | None):
    """Wrap in a tqdm progress bar when a description is given."""
    if description is None:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


class Trainer:
    """Trains `model` on `train_data` and evaluates it on `val_data`.

    Data are iterables of (x, y) batches with a length: a DataLoader, or SequenceBatches for a
    language model (whose forward takes and returns a recurrent state). `loss_fn(logits, y)` is
    the loss, `opt` the optimizer (None to evaluate only). `clip` clips the gradients' global
    norm, `flatten` reshapes x to (batch, -1), `max_batches` ends every pass early, `progress`
    shows progress bars in fit(). `accumulate` N: each update sums the gradients of N batches
    (micro-batches, each loss scaled by 1/N, ``backward(accumulate=True)``) and then steps once,
    as one batch N times larger would without BatchNorm or dropout; a pass's last update may
    have fewer (scaled by 1/its number). `hooks`: see the module's docstring.

    Accuracy is argmax(logits) == y per row of y; losses are averaged over the rows of y (the
    samples of a classifier, the target tokens of a language model).
    """

    # What a compiled update (ndl.compile of _update) does not depend on: counters, the data
    # and the hooks, which run outside it.
    _unguarded = ("steps", "epoch", "train_data", "val_data", "hooks", "_compiled")

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        opt=None,
        *,
        train_data=None,
        val_data=None,
        clip: float | None = None,
        flatten: bool = False,
        hooks: Sequence[Any] = (),
        max_batches: int | None = None,
        progress: bool = False,
        accumulate: int = 1,
        compile: bool = False,
        precision: str = "fp32",
    ):
        if accumulate < 1:
            raise ValueError(f"Trainer: accumulate must be at least 1, got {accumulate}")
        if precision not in PRECISIONS:
            raise ValueError(f"Trainer: precision must be one of {', '.join(PRECISIONS)}")
        # bf16 and fp16 run forward and loss under ndl.autocast; fp16 also scales the loss
        # (GradScaler: float16 gradients underflow), skipping steps with inf or NaN gradients.
        self.precision = precision
        self.scaler = amp.GradScaler() if precision == "fp16" else None
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.train_data, self.val_data = train_data, val_data
        self.clip, self.flatten = clip, flatten
        self.max_batches, self.progress = max_batches, progress
        self.accumulate = accumulate
        self.steps = 0  # optimizer steps taken by this Trainer
        self.hooks = list(hooks)
        for hook in self.hooks:
            if not any(hasattr(hook, name) for name in HOOK_METHODS):
                raise TypeError(f"Trainer: hook {hook!r} has none of {', '.join(HOOK_METHODS)}")
        self.epoch = 0  # the last epoch fit() completed (what a checkpoint is marked with)
        # The last training pass's time waiting for batches: (its share of the pass, the largest
        # share of one step after the first, whose wait includes starting the data workers);
        # data_blocked the same for the part of those waits when a batch was not ready (see
        # DataLoader.blocked_seconds): the rest is receiving ready batches.
        self.data_wait = self.data_blocked = (0.0, 0.0)
        # With `compile`, whole updates run through ndl.compile (recorded, then replayed) when
        # nothing must run between backward and the step (no clipping, no after_backward).
        self._compiled = ndl.compile(self._update) if compile else None

    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            method = getattr(hook, name, None)
            if method is not None:
                method(*args)

    # ---- one step, one pass -------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor, state=None):
        """(logits, loss, state): the model's output on x and its loss against y. A model that
        returns (logits, state), as a language model does, gets `state` back on the next call
        (detached: truncated backpropagation through time); others give state None."""
        if self.flatten:
            x = x.reshape((x.shape[0], -1))
        low = PRECISIONS[self.precision]
        with amp.autocast(dtype=low or "bfloat16", enabled=low is not None):
            out = self.model(x) if state is None else self.model(x, state)
            logits = out
            if isinstance(out, tuple):
                logits, state = out
                state = detach_state(state)
            return logits, self.loss_fn(logits, y), state

    def train_step(self, x: Tensor, y: Tensor, state=None, part: tuple[int, int] = (0, 1)):
        """Micro-batch `part` = (index, count) of an update: forward, loss, backward (of the
        loss / count, added to the gradients of the update's earlier micro-batches); after the
        last one the after_backward hooks, gradient clipping and the optimizer step. The
        default (0, 1) is a whole update. Returns what forward() does (the unscaled loss)."""
        index, count = part
        plain = count == 1 and self.clip is None and self.scaler is None  # (it reads grads)
        if self._compiled is not None and plain and not self._hooks_with("after_backward"):
            result = self._compiled(x, y, state)
            self.steps += 1
            self._call("after_step", self)
            return result
        logits, loss, state = self.forward(x, y, state)
        if index == 0:
            self.opt.reset_grad()
        scaled = loss if count == 1 else loss * (1.0 / count)
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward(accumulate=index > 0)
        if index < count - 1:
            return logits, loss, state
        self._call("after_backward", self)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if self.clip is not None:
            norm = clip_grad_norm(self.opt.params, self.clip)
            if not math.isfinite(norm) and self.scaler is None:  # (the scaler skips the step)
                raise TrainingDiverged(f"the gradients' norm became {norm}")
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.steps += 1
        self._call("after_step", self)
        return logits, loss, state

    def _update(self, x: Tensor, y: Tensor, state=None):
        """One whole update, as ndl.compile records it: (logits, loss, state)."""
        logits, loss, state = self.forward(x, y, state)
        self.opt.reset_grad()
        loss.backward()
        self.opt.step()
        return logits, loss, state

    def _hooks_with(self, name: str) -> bool:
        return any(hasattr(hook, name) for hook in self.hooks)

    def run_epoch(
        self, train: bool, data=None, description: str | None = None
    ) -> tuple[float, float]:
        """One pass over `data` (default: train_data when training, else val_data), training
        (train mode, an update per batch) or evaluating (eval mode). Returns (accuracy, mean
        loss) over the rows seen, after the reduce_totals hooks."""
        if data is None:
            data = self.train_data if train else self.val_data
        if train and self.opt is None:
            raise ValueError("Trainer.run_epoch(train=True) needs an optimizer")
        self.model.train() if train else self.model.eval()
        total = len(data) if self.max_batches is None else min(len(data), self.max_batches)
        n = self.accumulate
        correct, total_loss, seen, state, steps = 0, 0.0, 0, None, []
        batches = _timed(data, total, steps)
        for batch, (x, y) in enumerate(_progress(batches, total, description), 1):
            if train:  # micro-batch (batch - 1) % n of an update of min(n, what is left)
                first = (batch - 1) // n * n
                part = ((batch - 1) - first, min(n, total - first))
                logits, loss, state = self.train_step(x, y, state, part)
            else:
                logits, loss, state = self.forward(x, y, state)
            count = y.shape[0]
            correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
            value = float(loss.numpy())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the {'training' if train else 'validation'} loss became {value} "
                    f"at batch {batch}"
                )
            total_loss += value * count
            seen += count
        if train:
            check_finite_parameters(self.model)
            self.data_wait, self.data_blocked = _wait_shares(steps, 0), _wait_shares(steps, 2)
        totals = np.array([correct, total_loss, seen], dtype=np.float64)
        for hook in self.hooks:
            if hasattr(hook, "reduce_totals"):
                totals = hook.reduce_totals(totals)
        correct, total_loss, seen = (float(v) for v in totals)
        return correct / max(seen, 1.0), total_loss / max(seen, 1.0)

    # ---- epochs -------------------------------------------------------------------------
    def fit(self, epochs: int, start_epoch: int = 0) -> list[EpochResult]:
        """Epochs start_epoch + 1 .. epochs: the hooks' on_epoch_start, a training pass,
        after_train_epoch, a validation pass (with val_data), on_epoch_end. Returns the
        epochs' results."""
        self.epoch = start_epoch
        results = []
        for epoch in range(start_epoch + 1, epochs + 1):
            self._call("on_epoch_start", self, epoch)
            started = time.perf_counter()
            train = self.run_epoch(True, description=self._description(epoch, "train"))
            self._call("after_train_epoch", self, epoch)
            val = (
                None
                if self.val_data is None
                else self.run_epoch(False, description=self._description(epoch, "val"))
            )
            self.epoch = epoch
            seconds = time.perf_counter() - started
            result = EpochResult(epoch, train, val, seconds, self.data_wait, self.data_blocked)
            results.append(result)
            self._call("on_epoch_end", self, result)
        return results

    def _description(self, epoch: int, split: str) -> str | None:
        return f"epoch {epoch} {split}" if self.progress else None

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, path: str, meta: dict | None = None) -> None:
        """save_checkpoint of the model, the optimizer and (fp16) the loss scaler's state."""
        if self.scaler is not None:
            meta = {**(meta or {}), "grad_scaler": self.scaler.state_dict()}
        save_checkpoint(path, self.model, self.opt, meta)

    def load(self, path: str) -> dict:
        """load_checkpoint into the model, the optimizer and the loss scaler (so a resumed
        fp16 run keeps its scale); returns the meta dict."""
        meta = load_checkpoint(path, self.model, self.opt)
        if self.scaler is not None and "grad_scaler" in meta:
            self.scaler.load_state_dict(meta["grad_scaler"])
        return meta


def check_finite_parameters(model: nn.Module) -> None:
    """Raise TrainingDiverged if a parameter holds NaN or infinity (a non-finite gradient
    the loss has not shown yet)."""
    for name, value in model.state_dict().items():
        if not np.isfinite(value).all():
            raise TrainingDiverged(f"parameter {name} became non-finite")


# ---- checkpoints ----------------------------------------------------------------------------
def _flatten_optimizer(state: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {f"optim/hyper/{k}": np.asarray(v) for k, v in state["hyperparameters"].items()}
    for i, buffers in state["state"].items():
        for k, v in buffers.items():
            arrays[f"optim/state/{i}/{k}"] = np.asarray(v)
    return arrays


def _unflatten_optimizer(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    state: dict[str, Any] = {"hyperparameters": {}, "state": {}}
    for key, value in arrays.items():
        parts = key.split("/")
        if parts[1] == "hyper":
            state["hyperparameters"][parts[2]] = value.item()
        else:
            state["state"].setdefault(int(parts[2]), {})[parts[3]] = (
                value.item() if value.ndim == 0 else value
            )
    return state


def save_checkpoint(path: str, model: nn.Module, opt=None, meta: dict | None = None) -> None:
    """Write model and optimizer state plus `meta` (JSON) to an .npz, atomically (see
    needle.serialization.atomic_write): an interrupted save never leaves a torn file."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if opt is not None:
        arrays.update(_flatten_optimizer(opt.state_dict()))
    arrays["meta"] = np.asarray(json.dumps(meta or {}))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = np.load(path, allow_pickle=False) if zipfile.is_zipfile(path) else None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path} is not a needle checkpoint (not an .npz archive)")
        with data:
            return {k: data[k] for k in data.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CheckpointError(f"{path} is damaged or not a needle checkpoint ({error})") from None


def _meta_of(path: str, arrays: dict[str, np.ndarray]) -> dict:
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a needle checkpoint (it has no meta record)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as error:
        raise CheckpointError(f"{path} has a damaged meta record ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a damaged meta record (not a JSON object)")
    return meta


def read_checkpoint_meta(path: str) -> dict:
    """The meta dict of a checkpoint, without loading it into a model."""
    return _meta_of(path, _read_arrays(path))


def load_checkpoint(path: str, model: nn.Module, opt=None) -> dict:
    """Restore what save_checkpoint wrote into `model` (and `opt`); returns the meta dict.
    Raises CheckpointError, naming the file, for a damaged checkpoint, one of another model,
    or weights that are not finite real numbers."""
    arrays = _read_arrays(path)
    meta = _meta_of(path, arrays)
    weights = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this model: {len(missing)} of its tensors missing, "
            f"{len(unexpected)} unknown" + (f" (e.g. {(missing or unexpected)[0]})")
        )
    for name, value in weights.items():
        if value.dtype.kind not in "fiu":
            raise CheckpointError(f"{path}: {name} holds {value.dtype} values, not real numbers")
        if value.shape != own[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {value.shape}, the model {own[name].shape}"
            )
        if not np.isfinite(value).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
    optim_arrays = {k: v for k, v in arrays.items() if k.startswith("optim/")}
    for name, value in optim_arrays.items():
        if value.dtype.kind not in "fiub" or not np.isfinite(value.astype(np.float64)).all():
            raise CheckpointError(f"{path}: {name} is not finite real numbers")
    model.load_state_dict(weights)
    if opt is not None:
        try:
            opt.load_state_dict(_unflatten_optimizer(optim_arrays))
        except (KeyError, ValueError, IndexError) as error:
            raise CheckpointError(
                f"{path} holds optimizer state that does not fit ({error})"
            ) from None
    return meta
