"""Mixed precision: ``autocast`` and ``GradScaler``, as torch.autocast and torch.amp.GradScaler.

Inside ``with ndl.autocast(dtype="bfloat16"):`` the ops that do the multiplying (matmul and
so Linear, conv, attention) cast their floating-point inputs to the 16-bit dtype and compute
there (float32 sums, one rounding: the matmul rows' contract); the losses and prod cast theirs
to float32. Every other op runs in its inputs' dtype, a 16-bit one computed in float32 and
rounded once (reductions, softmax, norms: ``Value._compute``). These are torch's CPU rules;
``tests/test_amp.py`` checks the output dtypes against ``torch.autocast("cpu")`` op by op.

The casts are ``astype`` ops in the graph, whose adjoint converts back: parameters and
optimizer state stay float32 (master weights) and their ``.grad`` is float32. An op's class
says where it belongs (``Op.autocast``: "low" or "float32").

float16's range is small (6.5e4), so gradients of a float16 step can under- or overflow:
``GradScaler`` multiplies the loss by a scale, divides the gradients by it before the step,
skips a step whose gradients hold inf or NaN (halving the scale) and doubles the scale after
``growth_interval`` good steps.
"""

from __future__ import annotations

import math
from typing import Any

from . import autograd
from .backend_ndarray import HALFS

__all__ = ["autocast", "GradScaler", "is_autocast_enabled", "get_autocast_dtype"]


def _autocast_dtype(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if name not in HALFS:
        raise ValueError(f"autocast: dtype must be one of {', '.join(HALFS)}, got {dtype!r}")
    return name


class autocast:
    """Context manager (and decorator) for mixed precision; ``device_type`` is accepted for
    torch's signature (needle's rules are the same on every device)."""

    def __init__(self, device_type: str | None = None, dtype: Any = "bfloat16", enabled=True):
        self.dtype = _autocast_dtype(dtype)
        self.enabled = bool(enabled)

    def __enter__(self) -> autocast:
        self._previous = autograd._AUTOCAST
        autograd._AUTOCAST = self.dtype if self.enabled else None
        return self

    def __exit__(self, *exc) -> None:
        autograd._AUTOCAST = self._previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with autocast(dtype=self.dtype, enabled=self.enabled):
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_autocast_enabled() -> bool:
    return autograd._AUTOCAST is not None


def get_autocast_dtype() -> str | None:
    """The 16-bit dtype of the enclosing autocast, None outside one."""
    return autograd._AUTOCAST


class GradScaler:
    """Dynamic loss scaling for float16 training, as torch.amp.GradScaler:

        scaler.scale(loss).backward()
        scaler.step(optimizer)   # unscales, skips the step if a gradient is inf or NaN
        scaler.update()          # halves the scale after a skip, doubles it after
                                 # growth_interval good steps

    ``skipped`` counts the steps skipped so far (the training log reports it)."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ):
        if not (growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError(
                "GradScaler: needs growth_factor > 1, 0 < backoff_factor < 1 and "
                f"growth_interval >= 1, got {growth_factor}, {backoff_factor}, {growth_interval}"
            )
        self.enabled = enabled
        self._scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self._good_steps = 0
        self.skipped = 0
        self._unscaled: dict[int, bool] = {}  # id(optimizer) -> found inf/nan

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def scale(self, loss):
        """loss times the scale (loss itself when disabled)."""
        return loss * self._scale if self.enabled else loss

    def unscale_(self, optimizer) -> None:
        """Divide optimizer's gradients by the scale (once per step) and note whether any of
        them holds inf or NaN."""
        if not self.enabled or id(optimizer) in self._unscaled:
            return
        total = None
        for p in optimizer.params:
            if p.grad is not None:
                p.grad = (p.grad * (1.0 / self._scale)).detach()
                total = p.grad.sum() if total is None else total + p.grad.sum()
        # One host read for all of them: a sum is finite exactly when no term is inf or NaN
        # (barring an overflow of finite float32 sums, which is as good a reason to skip).
        self._unscaled[id(optimizer)] = total is not None and not _finite(total)

    def step(self, optimizer) -> bool:
        """optimizer.step() unless a gradient is inf or NaN; True when it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        self.unscale_(optimizer)
        if self._unscaled[id(optimizer)]:
            self.skipped += 1
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Adjust the scale after this step's optimizers stepped (or were skipped)."""
        if not self.enabled:
            return
        if any(self._unscaled.values()):
            self._scale *= self.backoff_factor
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= self.growth_interval:
                self._scale *= self.growth_factor
                self._good_steps = 0
        self._unscaled.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "good_steps": self._good_steps,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._good_steps = int(state["good_steps"])
        self.skipped = int(state["skipped"])


def _finite(total) -> bool:
    return math.isfinite(float(total.numpy()))
