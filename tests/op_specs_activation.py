"""The op-spec table's entries for needle.ops.ops_activation (issue 16); see op_specs.py.

(Imported by op_specs at its end, so its helpers are already defined here.)
"""

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from op_specs import (
    BROADCAST_SAMPLES,
    NOT_BROADCASTING,
    POSITIVE,
    REAL,
    SATURATING,
    TIES,
    Error,
    OpSpec,
    Sample,
    _no_broadcast,
    _unary,
    broadcast_pairs,
    uniform,
)

import needle as ndl
from needle import ops

UNARY_SHAPES = [(7,), (3, 4), (2, 3, 4), ()]
# Either side of the thresholds where erf switches between Cody's ranges (0.46875, 4), the
# tails where erf is 1 - tiny (float64) or exactly +-1, and 0.
ERF_VALUES = [-30.0, -6.0, -4.0001, -4.0, -1.0, -0.46876, -0.46875, -1e-8, 0.0, 1e-8, 0.3]
ERF_VALUES += [0.46875, 0.46876, 2.5, 3.9999, 4.0, 4.0001, 5.5, 6.0, 30.0]


def _activation(op, function, torch_fn, samples, domain=REAL, errors=()):
    """An elementwise op with keyword options: also called as its class and as the Tensor
    method of its name."""
    forms = [
        lambda x, **kw: op(**kw)(x),
        lambda x, **kw: getattr(x, function.__name__)(**kw),
    ]
    return OpSpec(op, function, torch_fn, samples, domain=domain, forms=forms, errors=list(errors))


def _bool(cond):
    return np.asarray(cond, dtype=bool)


def torch_where(a, b, cond, fill=None):
    """torch.where(cond, a, b), or with `fill` (a number) for b, plus 0 * b so that b still
    gets a (zero) gradient."""
    if fill is None:
        return torch.where(torch.tensor(cond), a, b)
    return torch.where(torch.tensor(cond), a, fill) + 0 * b


def _tensor(x, like):
    """x, or a number as a constant 0-d Tensor like `like` (the class takes Tensors only)."""
    if isinstance(x, ndl.Tensor):
        return x
    return ndl.Tensor(np.array(x), device=like.device, dtype=like.dtype, requires_grad=False)


def _where_form(where):
    """needle's where(condition, a, b) spelled by `where`, as torch_where calls it."""

    def form(a, b, cond, fill=None):
        condition = ndl.Tensor(cond, device=a.device, dtype="bool")
        if fill is None:
            return where(condition, a, b)
        return where(condition, a, fill) + b * 0

    return form


def torch_minimum(a, b):
    return torch.minimum(a, b if torch.is_tensor(b) else torch.tensor(b, dtype=a.dtype))


RNG = np.random.RandomState(16)
WHERE_SAMPLES = [
    Sample((3, 4), (3, 4), cond=_bool(RNG.rand(3, 4) < 0.5)),
    Sample((3, 1, 5), (4, 1), cond=_bool(RNG.rand(3, 4, 5) < 0.5)),  # all three broadcast
    Sample((2, 3), (3,), cond=_bool(RNG.rand(3) < 0.5)),
    Sample((), (2, 3), cond=_bool(RNG.rand(2, 1) < 0.5)),
    Sample((2, 3), (2, 3), cond=np.ones((2, 3), bool)),
    Sample((2, 3), (2, 3), cond=np.zeros((), bool)),
    # Values as large as float32 holds are chosen exactly (x * 1 + 0).
    Sample(np.array([3e38, -1e-30, 7.0]), np.array([1e-30, -3e38, 2.0]), cond=[True, False, True]),
    # inf and NaN in the branch not taken stay out (a select, not a blend by 0/1 masks).
    Sample(
        np.array([[1.0, np.inf, np.nan], [-np.inf, 2.0, 3.0]]),
        np.array([np.nan, -1.0, np.inf]),
        cond=np.array([[True, False, False], [False, True, True]]),
    ),
    # A number for b: the attention mask where(mask, scores, -inf), and 0.
    Sample((3, 4), (3, 4), cond=_bool(RNG.rand(3, 4) < 0.5), fill=-np.inf),
    Sample((2, 3), (3,), cond=_bool(RNG.rand(2, 1) < 0.5), fill=0),
]

SPECS = [
    _unary(ops.Abs, ops.abs, torch.abs, REAL, [-1.0, 0.0, -0.0, 2.0]),  # gradient 0 at 0
    # torch's sign gradient is a constant zero with no graph: first order only.
    replace(_unary(ops.Sign, ops.sign, torch.sign, REAL, [-1.5, 0.0, -0.0, 2.0]), orders=(1,)),
    _unary(ops.Rsqrt, ops.rsqrt, torch.rsqrt, POSITIVE, [1e-6, 0.25, 1.0, 1e6]),
    _unary(ops.Sin, ops.sin, torch.sin, uniform(-4.0, 4.0)),
    _unary(ops.Cos, ops.cos, torch.cos, uniform(-4.0, 4.0)),
    OpSpec(
        ops.Clamp,
        ops.clamp,
        torch.clamp,
        [Sample(s, min=-0.5, max=0.75) for s in UNARY_SHAPES]
        + [
            Sample((3, 4), min=0),
            Sample((3, 4), max=np.float32(-0.25)),
            Sample((3, 4), min=0.5, max=-0.5),  # min > max: max everywhere, as torch
            # On the bounds: the gradient passes (torch's >= and <=).
            Sample(np.array([-1.0, -0.5, 0.0, 0.75, 1.0]), min=-0.5, max=0.75),
        ],
        forms=[
            lambda x, min=None, max=None: ops.Clamp(min, max)(x),
            lambda x, min=None, max=None: x.clamp(min=min, max=max),
        ],
        errors=[
            Error([(3, 4)], {}, ValueError, r"^clamp: at least one of min and max"),
            Error([(3, 4)], {"min": "0"}, TypeError, r"^clamp: expected a number, got str"),
        ],
    ),
    OpSpec(
        ops.Minimum,
        ops.minimum,
        torch_minimum,
        BROADCAST_SAMPLES
        + [Sample(TIES(4, 5), TIES(4, 5)), Sample(TIES(3, 1), TIES(4))]  # ties split evenly
        + [
            Sample(np.arange(-5, 5, dtype=np.float32).reshape(2, 5) / 2, b=c)
            for c in (0.0, 1.0, -0.5)
        ],
        forms=[
            lambda a, b: ops.Minimum()(a, b) if isinstance(b, ndl.Tensor) else ops.Minimum(b)(a),
            lambda a, b: a.minimum(b),
        ],
        errors=[
            _no_broadcast("minimum"),
            Error([(2, 3)], {"b": "1"}, TypeError, r"^minimum: expected a number, got str"),
        ],
        random=broadcast_pairs(),
    ),
    OpSpec(
        ops.Where,
        ops.where,
        torch_where,
        WHERE_SAMPLES,
        call=_where_form(ops.where),
        forms=[
            _where_form(lambda condition, a, b: a.where(condition, b)),
            _where_form(lambda condition, a, b: ops.Where()(condition, a, _tensor(b, a))),
        ],
        errors=[
            Error(
                NOT_BROADCASTING,
                {"cond": np.ones((3, 4), bool)},
                ValueError,
                r"^where: shapes \(3, 4\) and \(3, 4\) and \(2, 4\) do not broadcast \(inputs: "
                r"\(3, 4\) bool on \w+\(\), \(3, 4\) float32",
            ),
            Error(
                [(3, 4), (3, 4)],
                {"cond": np.ones((2, 4), bool)},
                ValueError,
                r"^where: shapes \(2, 4\) and \(3, 4\) and \(3, 4\) do not broadcast",
            ),
        ],
    ),
    _activation(
        ops.SiLU,
        ops.silu,
        F.silu,
        [Sample(s) for s in UNARY_SHAPES] + [Sample(np.array(SATURATING, dtype=np.float32))],
        domain=uniform(-6.0, 6.0),
    ),
    _activation(
        ops.Softplus,
        ops.softplus,
        F.softplus,
        [Sample(s) for s in UNARY_SHAPES]
        + [
            Sample((3, 4), beta=2.0, threshold=1.5),  # both sides of beta x = threshold
            Sample((2, 5), beta=0.5, threshold=0.25),
            Sample(uniform(-40.0, 40.0)(4, 5)),  # both sides of the default threshold
            # exp(-|x|) below float32's epsilon, and far below float64's.
            Sample(np.array([-100.0, -30.0, -18.0, -1e-4, 0.0, 19.0, 21.0, 100.0])),
            # Relative precision where log(1 + exp(x)) loses it all (no atol: 1e-13 counts).
            Sample(np.array([-30.0, -25.0, -18.0, -12.0, -5.0]), tol=(1e-5, 0.0)),
            # Infinities and huge values: softplus(inf) = inf, softplus(-inf) = 0 (no NaN from
            # the branch not taken), on either sign of beta.
            Sample(np.array([np.inf, -np.inf, 1e30, -1e30, 30.0, -30.0, 0.0])),
            Sample(np.array([np.inf, -np.inf, 1e30, -1e30, 3.0, -3.0]), beta=-1.0),
            Sample(np.array([np.inf, -np.inf, 0.5, 0.75, -2.0]), beta=2.0, threshold=1.5),
        ],
        domain=uniform(-4.0, 4.0),
        errors=[Error([(3, 4)], {"beta": None}, TypeError, r"^softplus: expected a number")],
    ),
    _activation(
        ops.LeakyReLU,
        ops.leaky_relu,
        F.leaky_relu,
        [Sample(s) for s in UNARY_SHAPES]
        + [
            Sample((3, 4), negative_slope=0.2),
            Sample((3, 4), negative_slope=-1.5),
            Sample((3, 4), negative_slope=3.0),
            Sample(np.array([-1.0, 0.0, -0.0, 2.0]), negative_slope=0.1),  # the slope at 0
        ],
    ),
    _activation(
        ops.ELU,
        ops.elu,
        F.elu,
        [Sample(s) for s in UNARY_SHAPES]
        + [
            Sample((3, 4), alpha=0.5),
            Sample((3, 4), alpha=2.0),
            # Relative precision near 0, where exp(x) - 1 cancels (no atol).
            Sample(np.array([-1e-3, -1e-4, -3e-6, -1e-7, 1e-5]), tol=(1e-5, 0.0)),
            Sample(np.array([-200.0, -90.0, -20.0, 0.0, 1.0, 90.0])),  # exp(90) overflows
        ],
        domain=uniform(-3.0, 3.0),
    ),
    _activation(
        ops.GELU,
        ops.gelu,
        F.gelu,
        [Sample(s) for s in UNARY_SHAPES]
        + [Sample(s, approximate="tanh") for s in UNARY_SHAPES]
        + [
            Sample(uniform(-8.0, 8.0)(5, 4)),
            Sample(uniform(-8.0, 8.0)(5, 4), approximate="tanh"),
            Sample(np.array(SATURATING, dtype=np.float32)),
            Sample(np.array(SATURATING, dtype=np.float32), approximate="tanh"),
        ],
        domain=uniform(-3.0, 3.0),
        errors=[
            Error([(3, 4)], {"approximate": "exact"}, ValueError, r"^gelu: approximate must be")
        ],
    ),
    OpSpec(
        ops.Erf,
        ops.erf,
        torch.erf,
        [Sample(s) for s in UNARY_SHAPES]
        + [Sample(uniform(-6.0, 6.0)(40)), Sample(np.array(ERF_VALUES, dtype=np.float32))]
        # Relative precision near 0 (no atol), where 1 - erfc(x) would cancel.
        + [Sample(np.array([1e-30, -1e-8, 1e-5, -0.01, 0.2]), tol=(1e-6, 0.0))],
        domain=uniform(-3.0, 3.0),
        forms=[ops.Erf(), lambda x: x.erf()],
    ),
]
