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
from typing import Any

import numpy as np

from .autograd import Tensor, no_grad
from .backend_ndarray import NDArray, axpby

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


class Optimizer:
    """Base class: holds the parameters and per-parameter state (a dict of Tensors each)."""

    # Names of the hyper-parameters saved by state_dict(); subclasses extend this.
    _hyperparameters: tuple[str, ...] = ("lr",)
    lr: float  # the learning rate, set by each optimizer (and by an LRScheduler)

    def __init__(self, params: Iterable[Tensor]):
        self.params: list[Tensor] = list(params)
        # state[i] holds the buffers of self.params[i] (momentum, moments, step count).
        self.state: dict[int, dict[str, Any]] = {}

    def step(self) -> None:
        raise NotImplementedError()

    def reset_grad(self) -> None:
        """Clear every parameter's gradient (the course's name)."""
        for p in self.params:
            p.grad = None

    def zero_grad(self) -> None:
        """Alias of reset_grad, as in torch."""
        self.reset_grad()

    def _grads(self):
        """(index, parameter, its gradient's data in the parameter's dtype), skipping params
        without a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad.realize_cached_data()
            if grad.dtype != p.dtype:
                grad = grad.astype(p.dtype)
            yield i, p, grad

    @staticmethod
    def _update(tensor: Tensor, alpha: float, beta: float, step: NDArray) -> None:
        """tensor's data = alpha * data + beta * step (step in the tensor's dtype), in place
        when the data is private to `tensor`."""
        data = tensor.realize_cached_data()
        # Private: the only references to the NDArray are tensor.cached_data, `data` and
        # getrefcount's argument, and the NDArray is the only one on its buffer (views,
        # detach() and the like would hold the NDArray or the buffer). An in-place update
        # then changes nothing anyone else can see.
        private = sys.getrefcount(data) == 3 and sys.getrefcount(data._handle) == 2
        tensor.cached_data = axpby(alpha, data, beta, step, out=data if private else None)

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and per-parameter buffers, as NumPy arrays and Python numbers."""
        state = {
            i: {k: (v.numpy().copy() if isinstance(v, Tensor) else v) for k, v in s.items()}
            for i, s in self.state.items()
        }
        hyper = {name: getattr(self, name) for name in self._hyperparameters}
        return {"hyperparameters": hyper, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() saved; buffers go to each parameter's device and dtype."""
        for name, value in state_dict["hyperparameters"].items():
            if name not in self._hyperparameters:
                raise KeyError(
                    f"load_state_dict: unknown hyper-parameter {name!r} for {type(self).__name__}"
                )
            setattr(self, name, value)
        self.state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(self.params):
                raise KeyError(
                    f"load_state_dict: state for parameter {i}, but the optimizer "
                    f"has {len(self.params)} parameters"
                )
            p = self.params[i]
            restored = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    if v.shape != tuple(p.shape):
                        raise ValueError(
                            f"load_state_dict: {k} of parameter {i} has shape "
                            f"{v.shape}, the parameter {tuple(p.shape)}"
                        )
                    v = Tensor(v, device=p.device, dtype=p.dtype, requires_grad=False)
                restored[k] = v
            self.state[i] = restored


class SGD(Optimizer):
    """Stochastic gradient descent with the course's momentum.

    u = momentum * u + (1 - momentum) * (grad + weight_decay * w);  w -= lr * u,  u0 = 0.
    This is needle's formulation: unlike torch.optim.SGD, the gradient is damped by
    (1 - momentum) and the buffer starts at zero, not at the first gradient (torch with
    dampening=momentum matches from the second step on).
    """

    _hyperparameters = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay

    @no_grad()
    def step(self) -> None:
        for i, p, grad in self._grads():
            if self.weight_decay:
                grad = axpby(1.0, grad, self.weight_decay, p.realize_cached_data())
            u = grad
            if self.momentum:
                state = self.state.setdefault(i, {})
                if "momentum_buffer" in state:
                    self._update(state["momentum_buffer"], self.momentum, 1 - self.momentum, grad)
                else:
                    state["momentum_buffer"] = Tensor.make_const(grad * (1 - self.momentum))
                u = state["momentum_buffer"].realize_cached_data()
            self._update(p, 1.0, -self.lr, u)


class Adam(Optimizer):
    """Adam with bias correction; weight_decay adds an L2 term to the gradient, as
    torch.optim.Adam does.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * m_hat / (sqrt(v_hat) + eps)
    with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). The step count t is kept per
    parameter (as torch), so a parameter that misses a step gets the right correction.
    """

    _hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay", "t")
    _decoupled = False
    _default_weight_decay = 0.0  # what weight_decay=None means (AdamW: 0.01, as torch)

    def __init__(
        self,
        params,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = self._default_weight_decay if weight_decay is None else weight_decay
        self.t = 0  # number of step() calls, as the course's Adam counts them

    @no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for i, p, grad in self._grads():
            decay = 1.0
            if self.weight_decay:
                if self._decoupled:
                    decay = 1 - self.lr * self.weight_decay
                else:
                    grad = axpby(1.0, grad, self.weight_decay, p.realize_cached_data())
            state = self.state.setdefault(i, {})
            t = state.get("step", 0) + 1
            state["step"] = t
            if "m" in state:
                self._update(state["m"], b1, 1 - b1, grad)
                self._update(state["v"], b2, 1 - b2, grad * grad)
            else:
                state["m"] = Tensor.make_const(grad * (1 - b1))
                state["v"] = Tensor.make_const(grad * grad * (1 - b2))
            m_hat = state["m"].realize_cached_data() / (1 - b1**t)
            v_hat = state["v"].realize_cached_data() / (1 - b2**t)
            self._update(p, decay, -self.lr, m_hat / (v_hat.sqrt() + self.eps))


class AdamW(Adam):
    """Adam with decoupled weight decay (w -= lr * weight_decay * w before the Adam step),
    as torch.optim.AdamW."""

    _decoupled = True
    _default_weight_decay = 0.01


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
