"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR).

Updates compute on the parameters' NDArrays, below the Tensor layer: they need no graph, and
a Tensor op adds about 10 us of dispatch per op per parameter. Each update ends in one fused
pass, ``axpby`` (w = a * w + b * step), that writes into the parameter's own buffer when
nothing else can see it (no other Tensor, NDArray or view holds it), as torch updates in
place, and into a new buffer otherwise, so that a detached copy or a view someone kept keeps
its old values, as in needle. Either way the Parameter objects (and so a model's references to
them) never change, and each parameter keeps its dtype. Per-parameter buffers are Tensors,
updated the same way.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from . import backend_ndarray as nd
from .autograd import (
    Tensor,
    array_of,
    no_grad,
    note_inplace_write,
    set_array,
    written_in_place,
)
from .backend_ndarray import NDArray, axpby
from .backend_selection import BACKEND

_NUMPY_MODE = BACKEND == "np"

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


class Optimizer:
    """Base class: holds the parameters (``.params``) and, per optimizer, dicts of
    per-parameter buffers keyed by the Parameter itself (SGD's ``.u``, Adam's ``.m`` and
    ``.v``), as the course's optimizers do."""

    # Names of the hyper-parameters saved by state_dict(); subclasses extend this.
    _hyperparameters: tuple[str, ...] = ("lr",)
    # Names of the per-parameter buffer dicts (attributes keyed by parameter).
    _buffers: tuple[str, ...] = ()
    lr: float  # the learning rate, set by each optimizer (and by an LRScheduler)

    def __init__(self, params: Iterable[Tensor]):
        params = params if isinstance(params, list) else list(params)
        # A Parameter shared by two layers comes twice from the course's parameters(): once here.
        unique = len(set(map(id, params))) == len(params)
        self.params: list[Tensor] = params if unique else list(dict.fromkeys(params))

    @property
    def state(self) -> dict[int, dict[str, Tensor]]:
        """The buffers by parameter index, {i: {name: Tensor}} (for checkpoints), built from
        the per-parameter dicts (the same Tensors)."""
        state: dict[int, dict[str, Tensor]] = {}
        for i, p in enumerate(self.params):
            buffers = {
                name: getattr(self, name)[p] for name in self._buffers if p in getattr(self, name)
            }
            if buffers:
                state[i] = buffers
        return state

    def step(self) -> None:
        raise NotImplementedError()

    def reset_grad(self) -> None:
        """Clear every parameter's gradient (the course's name)."""
        for p in self.params:
            p.grad = None

    def zero_grad(self) -> None:
        """Alias of reset_grad, as in torch."""
        self.reset_grad()

    def clip_grad_norm(self, max_norm: float = 0.25) -> float:
        """Rescale all gradients together so that their global L2 norm is at most `max_norm`
        (by max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_). Returns the norm
        before clipping. A parameter listed twice is counted once."""
        grads: dict[int, tuple[Tensor, Any]] = {
            id(p): (p, p.grad) for p in self.params if p.grad is not None
        }
        total = math.sqrt(
            sum(float(np.sum(np.square(g.numpy().astype(np.float64)))) for _, g in grads.values())
        )
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for p, g in grads.values():
                p.grad = Tensor.make_const(array_of(g) * coef)
        return total

    def _follow_parameters(self) -> None:
        """Move each buffer whose device or dtype is not its parameter's there (as
        nn.optimizer_to does), so that a step after ``model.to(...)`` works and computes what
        it would have without the move. One comparison per buffer; no copy in the usual case,
        where nothing moved."""
        for name in self._buffers:
            for p, buffer in getattr(self, name).items():
                # In the numpy mode every Tensor is on the one device: only dtypes can differ.
                if buffer.dtype == p.dtype and (_NUMPY_MODE or buffer.device == p.device):
                    continue
                target, array = array_of(p), array_of(buffer)
                if array.dtype != target.dtype:
                    array = array.astype(target.dtype)
                set_array(buffer, array.to(target.device))

    def _grads(self):
        """(parameter, its gradient's data as an NDArray in the parameter's dtype), skipping
        parameters whose grad is None. Buffers follow their parameters first."""
        self._follow_parameters()
        for p in self.params:
            if p.grad is None:
                continue
            grad = array_of(p.grad)
            dtype = array_of(p).dtype
            if grad.dtype != dtype:
                grad = grad.astype(dtype)
            yield p, grad

    @staticmethod
    def _update(tensor: Tensor, alpha: float, beta: float, step: NDArray) -> None:
        """tensor's data = alpha * data + beta * step (step in the tensor's dtype), in place
        when the data is private to `tensor`. The Tensor object stays the same and gets no
        graph (the data is swapped, as the course's ``p.data = ...``)."""
        if _NUMPY_MODE:
            # NumPy data are shared by detach()/.data: never write into them.
            set_array(tensor, axpby(alpha, array_of(tensor), beta, step))
            return
        data: NDArray = array_of(tensor)  # the data itself in this mode
        # Private: the only references to the NDArray are tensor.cached_data, `data` and
        # getrefcount's argument, and the NDArray is the only one on its buffer (views,
        # detach() and the like would hold the NDArray or the buffer). An in-place update
        # then changes nothing anyone else can see.
        # (autograd's record of in-place writes holds a buffer written before: one more.)
        held = 2 + written_in_place(data)
        private = sys.getrefcount(data) == 3 and sys.getrefcount(data._handle) == held
        # A step being recorded (needle.capture) updates in place as torch does, whoever holds
        # the buffer: its replays read and write one buffer per parameter.
        private = (private or nd.capturing()) and data.is_compact()
        # (a layout-keeping op may leave a permutation)
        set_array(tensor, axpby(alpha, data, beta, step, out=data if private else None))
        if private:  # a graph made before the step may not read the new values
            note_inplace_write("optimizer.step()", data)

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and per-parameter buffers (by parameter index), as NumPy arrays
        and Python numbers."""
        state = {i: {k: v.numpy().copy() for k, v in s.items()} for i, s in self.state.items()}
        hyper = {name: getattr(self, name) for name in self._hyperparameters}
        return {"hyperparameters": hyper, "state": state}

    # Buffer names of older checkpoints.
    _aliases: ClassVar[dict[str, str]] = {"momentum_buffer": "u"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() saved; buffers go to each parameter's device and dtype."""
        for name, value in state_dict["hyperparameters"].items():
            if name not in self._hyperparameters:
                raise KeyError(
                    f"load_state_dict: unknown hyper-parameter {name!r} for {type(self).__name__}"
                )
            setattr(self, name, value)
        restored: dict[str, dict[Tensor, Tensor]] = {name: {} for name in self._buffers}
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(self.params):
                raise KeyError(
                    f"load_state_dict: state for parameter {i}, but the optimizer "
                    f"has {len(self.params)} parameters"
                )
            p = self.params[i]
            for k, v in s.items():
                k = self._aliases.get(k, k)
                if k not in restored:
                    continue  # e.g. a per-parameter step count of older checkpoints
                value = np.asarray(v)
                if value.shape != tuple(p.shape):
                    raise ValueError(
                        f"load_state_dict: {k} of parameter {i} has shape "
                        f"{value.shape}, the parameter {tuple(p.shape)}"
                    )
                restored[k][p] = Tensor(value, device=p.device, dtype=p.dtype, requires_grad=False)
        for name, buffers in restored.items():
            setattr(self, name, buffers)


class SGD(Optimizer):
    """Stochastic gradient descent with the course's momentum, state ``.u`` (by parameter):

    g = grad + weight_decay * w;  u = momentum * u + (1 - momentum) * g (u starts at 0);
    w = w - lr * u.

    PyTorch differs: torch.optim.SGD keeps u = momentum * u + g (no (1 - momentum) factor,
    and the buffer starts at the first gradient).
    """

    _hyperparameters = ("lr", "momentum", "weight_decay")
    _buffers = ("u",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.u: dict[Tensor, Tensor] = {}

    @no_grad()
    def step(self) -> None:
        m = self.momentum
        for p, grad in self._grads():
            if self.weight_decay:
                grad = axpby(1.0, grad, self.weight_decay, array_of(p))
            if not m:  # u = g: the gradient itself, no arithmetic (the default SGD)
                self.u[p] = Tensor.make_const(grad)
            elif p in self.u:
                self._update(self.u[p], m, 1 - m, grad)
            else:  # m * 0 + (1 - m) * g, a buffer of its own
                self.u[p] = Tensor.make_const(grad * (1 - m))
            self._update(p, 1.0, -self.lr, array_of(self.u[p]))


class Adam(Optimizer):
    """Adam with bias correction, states ``.t`` (step() calls), ``.m`` and ``.v`` (by
    parameter); weight_decay adds an L2 term to the gradient, as torch.optim.Adam does:

    g = grad + weight_decay * w;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    w = w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).

    As in the course, t counts step() calls (torch counts per parameter; they differ only
    for a parameter that misses steps).
    """

    _hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay", "t")
    _buffers = ("m", "v")
    _decoupled = False

    def __init__(
        self,
        params,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m: dict[Tensor, Tensor] = {}
        self.v: dict[Tensor, Tensor] = {}

    # What ndl.compile's replays keep current (t, in step's from_host): left out of guards.
    _unguarded: ClassVar[tuple[str, ...]] = ("t",)

    @no_grad()
    def step(self) -> None:
        b1, b2 = self.beta1, self.beta2
        corrections = self._bias_corrections()
        for p, grad in self._grads():
            decay = 1.0
            if self.weight_decay:
                if self._decoupled:
                    decay = 1 - self.lr * self.weight_decay
                else:
                    grad = axpby(1.0, grad, self.weight_decay, array_of(p))
            if p in self.m:
                self._update(self.m[p], b1, 1 - b1, grad)
                self._update(self.v[p], b2, 1 - b2, grad * grad)
            else:  # from m = v = 0
                self.m[p] = Tensor.make_const(grad * (1 - b1))
                self.v[p] = Tensor.make_const(grad * grad * (1 - b2))
            c1, c2 = corrections if corrections is not None else (1 - b1**self.t, 1 - b2**self.t)
            m_hat = array_of(self.m[p]) / c1
            v_hat = array_of(self.v[p]) / c2
            self._update(p, decay, -self.lr, m_hat / (v_hat.sqrt() + self.eps))

    def _bias_corrections(self):
        """Advance t; (1 - beta1^t, 1 - beta2^t) as device arrays from nd.from_host, which
        ndl.compile's replays run again (numbers, None, for mixed devices or dtypes)."""
        kinds = {(p.device, p.dtype) for p in self.params}
        if _NUMPY_MODE or len(kinds) != 1:
            self.t += 1
            return None
        device, dtype = kinds.pop()
        both = nd.from_host(_next_adam_step, (), self, device=device, dtype=dtype)
        return both[0:1], both[1:2]


def _next_adam_step(adam: Adam) -> np.ndarray:
    adam.t += 1
    return np.array([1 - adam.beta1**adam.t, 1 - adam.beta2**adam.t])


class AdamW(Adam):
    """Adam with decoupled weight decay (w -= lr * weight_decay * w before the Adam step),
    as torch.optim.AdamW (weight_decay 0.01 by default, as torch)."""

    _decoupled = True

    def __init__(
        self,
        params,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr, beta1, beta2, eps, weight_decay)


# ---- learning-rate schedules ------------------------------------------------------------
class LRScheduler:
    """Sets ``optimizer.lr`` from the number of ``step()`` calls so far (``last_epoch``)."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def get_lr(self) -> float:
        raise NotImplementedError()

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lr = state_dict["base_lr"]
        self.last_epoch = state_dict["last_epoch"]


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = step_size
        self.gamma = gamma

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (torch's closed
    form; past T_max the cosine keeps going, back up towards base_lr)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        super().__init__(optimizer)
        self.T_max = T_max
        self.eta_min = eta_min

    def get_lr(self) -> float:
        cosine = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine
