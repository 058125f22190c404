"""Training loops, gradient clipping and atomic checkpoints, shared by `needle train` and the
course-layout helpers in `apps/`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from . import nn
from .autograd import Tensor, no_grad

__all__ = ["epoch_classification", "epoch_language_model", "clip_grad_norm", "detach_state",
           "save_checkpoint", "load_checkpoint"]


def _progress(iterable, total: int, description: Optional[str]):
    """Wrap in a tqdm progress bar when a description is given."""
    if description is None:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most `max_norm` (as torch's
    clip_grad_norm_); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    total = float(np.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum())
                              for p in params)))
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


def _train_step(loss: Tensor, opt, after_backward: Optional[Callable[[], None]] = None,
                clip: Optional[float] = None) -> None:
    """Backward, the data-parallel hook, optional gradient clipping, then the update."""
    opt.reset_grad()
    loss.backward()
    if after_backward is not None:
        after_backward()
    if clip is not None:
        clip_grad_norm(opt.params, clip)
    opt.step()


def epoch_classification(loader, model: nn.Module, loss_fn: Callable, opt=None,
                         flatten: bool = False, max_batches: Optional[int] = None,
                         description: Optional[str] = None,
                         after_backward: Optional[Callable[[], None]] = None,
                         reduce_totals: Optional[Callable[[np.ndarray], np.ndarray]] = None
                         ) -> Tuple[float, float]:
    """One pass over `loader`: trains when `opt` is given, else evaluates.

    Returns (accuracy, mean loss) over the samples seen. `after_backward()` runs after each
    backward, before the optimizer step, and `reduce_totals([correct, loss_sum, seen])` on the
    epoch's totals: `needle.distributed.epoch_hooks(model)` makes the pass data-parallel.
    """
    model.train() if opt is not None else model.eval()
    correct, total_loss, seen = 0, 0.0, 0
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, (x, y) in enumerate(_progress(loader, total, description)):
        if max_batches is not None and i >= max_batches:
            break
        if flatten:
            x = x.reshape((x.shape[0], -1))
        logits = model(x)
        loss = loss_fn(logits, y)
        if opt is not None:
            _train_step(loss, opt, after_backward)
        batch = x.shape[0]
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        total_loss += float(loss.numpy()) * batch
        seen += batch
    return _mean_metrics(correct, total_loss, seen, reduce_totals)


def epoch_language_model(batches: np.ndarray, model: nn.Module, seq_len: int, loss_fn: Callable,
                         opt=None, clip: Optional[float] = None, device=None, dtype="float32",
                         max_batches: Optional[int] = None,
                         description: Optional[str] = None,
                         after_backward: Optional[Callable[[], None]] = None,
                         reduce_totals: Optional[Callable[[np.ndarray], np.ndarray]] = None
                         ) -> Tuple[float, float]:
    """One pass over `batchify`'d ids with truncated BPTT windows of `seq_len`.

    Returns (next-word accuracy, mean loss per token); perplexity is exp(loss). The hooks are
    those of `epoch_classification` (`after_backward` runs before gradient clipping).
    """
    from .data import get_batch

    model.train() if opt is not None else model.eval()
    starts = list(range(0, len(batches) - 1, seq_len))
    if max_batches is not None:
        starts = starts[:max_batches]
    correct, total_loss, seen, h = 0, 0.0, 0, None
    for i in _progress(starts, len(starts), description):
        x, y = get_batch(batches, i, seq_len, device=device, dtype=dtype)
        logits, h = model(x, h)
        h = detach_state(h)
        loss = loss_fn(logits, y)
        if opt is not None:
            _train_step(loss, opt, after_backward, clip)
        count = y.shape[0]
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        total_loss += float(loss.numpy()) * count
        seen += count
    return _mean_metrics(correct, total_loss, seen, reduce_totals)


def _mean_metrics(correct, total_loss, seen, reduce_totals) -> Tuple[float, float]:
    """(accuracy, mean loss) from the totals, summed over processes first by `reduce_totals`."""
    if reduce_totals is not None:
        correct, total_loss, seen = reduce_totals(np.array([correct, total_loss, seen],
                                                           dtype=np.float64))
    return float(correct) / max(seen, 1), float(total_loss) / max(seen, 1)


# ---- checkpoints ----------------------------------------------------------------------------
def _flatten_optimizer(state: Dict[str, Any]) -> Dict[str, np.ndarray]:
    arrays = {f"optim/hyper/{k}": np.asarray(v) for k, v in state["hyperparameters"].items()}
    for i, buffers in state["state"].items():
        for k, v in buffers.items():
            arrays[f"optim/state/{i}/{k}"] = np.asarray(v)
    return arrays


def _unflatten_optimizer(arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"hyperparameters": {}, "state": {}}
    for key, value in arrays.items():
        parts = key.split("/")
        if parts[1] == "hyper":
            state["hyperparameters"][parts[2]] = value.item()
        else:
            state["state"].setdefault(int(parts[2]), {})[parts[3]] = \
                value.item() if value.ndim == 0 else value
    return state


def save_checkpoint(path: str, model: nn.Module, opt=None, meta: Optional[dict] = None) -> None:
    """Write model and optimizer state plus `meta` (JSON) to an .npz, atomically: a temporary
    file in the same directory, then a rename, so an interrupted save never leaves a torn file."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if opt is not None:
        arrays.update(_flatten_optimizer(opt.state_dict()))
    arrays["meta"] = np.asarray(json.dumps(meta or {}))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, model: nn.Module, opt=None) -> dict:
    """Restore what save_checkpoint wrote into `model` (and `opt`); returns the meta dict."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
    if opt is not None:
        opt.load_state_dict(_unflatten_optimizer(
            {k: v for k, v in arrays.items() if k.startswith("optim/")}))
    return json.loads(str(arrays["meta"]))
