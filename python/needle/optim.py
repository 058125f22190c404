"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR).

Updates compute on the parameters' NDArrays, below the Tensor layer: they need no graph, and
a Tensor op adds about 10 us of dispatch per op per parameter (0.1 ms of the 6 ms SGD step
of benchmarks/bench_train.py's MLP; Adam has a dozen ops per parameter). The result is
written back into each Parameter's data: the Parameter objects (and so a model's references
to them) never change, and each parameter keeps its dtype. Per-parameter buffers are kept as
Tensors.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List

import numpy as np

from .autograd import NDArray, Tensor, no_grad

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


class Optimizer:
    """Base class: holds the parameters and per-parameter state (a dict of Tensors each)."""

    # Names of the hyper-parameters saved by state_dict(); subclasses extend this.
    _hyperparameters = ("lr",)

    def __init__(self, params: Iterable[Tensor]):
        self.params: List[Tensor] = list(params)
        # state[i] holds the buffers of self.params[i] (momentum, moments, step count).
        self.state: Dict[int, Dict[str, Any]] = {}

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
        """(index, parameter, its data, its gradient's data in the parameter's dtype) as
        NDArrays, skipping params without a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            w = p.realize_cached_data()
            grad = p.grad.realize_cached_data()
            if grad.dtype != w.dtype:
                grad = grad.astype(w.dtype)
            yield i, p, w, grad

    @staticmethod
    def _assign(param: Tensor, value: NDArray) -> None:
        if value.dtype != param.dtype:
            value = value.astype(param.dtype)
        param.cached_data = value

    def state_dict(self) -> Dict[str, Any]:
        """Hyper-parameters and per-parameter buffers, as NumPy arrays and Python numbers."""
        state = {
            i: {k: (v.numpy().copy() if isinstance(v, Tensor) else v) for k, v in s.items()}
            for i, s in self.state.items()
        }
        hyper = {name: getattr(self, name) for name in self._hyperparameters}
        return {"hyperparameters": hyper, "state": state}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore what state_dict() saved; buffers go to each parameter's device and dtype."""
        for name, value in state_dict["hyperparameters"].items():
            if name not in self._hyperparameters:
                raise KeyError(f"load_state_dict: unknown hyper-parameter {name!r} for "
                               f"{type(self).__name__}")
            setattr(self, name, value)
        self.state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(self.params):
                raise KeyError(f"load_state_dict: state for parameter {i}, but the optimizer "
                               f"has {len(self.params)} parameters")
            p = self.params[i]
            restored = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    if v.shape != tuple(p.shape):
                        raise ValueError(f"load_state_dict: {k} of parameter {i} has shape "
                                         f"{v.shape}, the parameter {tuple(p.shape)}")
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
        for i, p, w, grad in self._grads():
            if self.weight_decay:
                grad = grad + w * self.weight_decay
            if self.momentum:
                state = self.state.setdefault(i, {})
                u = grad * (1 - self.momentum)
                if "momentum_buffer" in state:
                    u = state["momentum_buffer"].realize_cached_data() * self.momentum + u
                state["momentum_buffer"] = Tensor.make_const(u)
            else:
                u = grad
            self._assign(p, w - u * self.lr)


class Adam(Optimizer):
    """Adam with bias correction; weight_decay adds an L2 term to the gradient, as
    torch.optim.Adam does.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr * m_hat / (sqrt(v_hat) + eps)
    with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). The step count t is kept per
    parameter (as torch), so a parameter that misses a step gets the right correction.
    """

    _hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay", "t")
    _decoupled = False

    def __init__(self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0  # number of step() calls, as the course's Adam counts them

    @no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for i, p, w, grad in self._grads():
            if self.weight_decay:
                if self._decoupled:
                    w = w * (1 - self.lr * self.weight_decay)
                else:
                    grad = grad + w * self.weight_decay
            state = self.state.setdefault(i, {})
            t = state.get("step", 0) + 1
            state["step"] = t
            m, v = grad * (1 - b1), grad * grad * (1 - b2)
            if "m" in state:
                m = state["m"].realize_cached_data() * b1 + m
                v = state["v"].realize_cached_data() * b2 + v
            state["m"], state["v"] = Tensor.make_const(m), Tensor.make_const(v)
            m_hat = m / (1 - b1 ** t)
            v_hat = v / (1 - b2 ** t)
            self._assign(p, w - m_hat / (v_hat.sqrt() + self.eps) * self.lr)


class AdamW(Adam):
    """Adam with decoupled weight decay (w -= lr * weight_decay * w before the Adam step),
    as torch.optim.AdamW."""

    _decoupled = True

    def __init__(self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay)


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

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
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
