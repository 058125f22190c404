"""Weight initialisers with needle's signatures and gains (Glorot and He)."""

import math

from .init_basic import rand, randn

__all__ = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


class NonlinearityError(ValueError, AssertionError):
    """An unsupported `nonlinearity` (only "relu" is): a ValueError, and an AssertionError
    as the course's ``assert nonlinearity == "relu"`` raises."""


def _check_relu(name: str, nonlinearity) -> None:
    if nonlinearity != "relu":
        raise NonlinearityError(
            f"{name}: only nonlinearity='relu' is supported, got {nonlinearity!r}"
        )


def xavier_uniform(fan_in, fan_out, gain=1.0, **kwargs):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)), shape (fan_in, fan_out)."""
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rand(fan_in, fan_out, low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, **kwargs):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)), shape (fan_in, fan_out)."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return randn(fan_in, fan_out, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """U(-b, b) with b = sqrt(2) * sqrt(3 / fan_in) (ReLU gain); `shape` overrides
    (fan_in, fan_out) but the bound always uses fan_in."""
    _check_relu("kaiming_uniform", nonlinearity)
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
    shape = (fan_in, fan_out) if shape is None else tuple(shape)
    return rand(*shape, low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, nonlinearity="relu", *, shape=None, **kwargs):
    """N(0, std^2) with std = sqrt(2) / sqrt(fan_in) (ReLU gain), shape (fan_in, fan_out)
    (or `shape`, a keyword-only extra)."""
    _check_relu("kaiming_normal", nonlinearity)
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    shape = (fan_in, fan_out) if shape is None else tuple(shape)
    return randn(*shape, std=std, **kwargs)
