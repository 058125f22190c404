"""Type promotion: the dtype of an operation on arrays of different dtypes, or with a number.

Two rules, chosen per process (``set_promotion``):

- ``"torch"`` (the NDArray mode, default), PyTorch's: categories bool < integer < floating;
  a higher category wins with its own dtype (int64 + float32 is float32); within a category
  the wider type (uint8 + int32 is int32; int32 + int64 is int64). A Python or NumPy number
  counts only by category: an int keeps an integer array's dtype, a float turns an integer or
  bool array into float32 (the default float), a float array keeps its dtype.
- ``"numpy"`` (``NEEDLE_BACKEND=np``), NumPy 2's: ``np.result_type``, so int64 + float32 is
  float64, and a Python number is weak (NEP 50) while a NumPy scalar is not.

True division, powers and the transcendental functions of an integer or bool array compute
in the default float of the rule: float32 (torch) or float64 (numpy). Sums of integers and
bools are int64. Integer arithmetic wraps around on overflow (as both do).
"""

from __future__ import annotations

import numbers

import numpy as np

from .primitives import DTYPES, FLOATING, FLOATS, HALFS

_RULE = "torch"
_CATEGORY = {"bool": 0, "uint8": 1, "int32": 1, "int64": 1}
_CATEGORY.update(dict.fromkeys(FLOATING, 2))
_WIDER = {  # within a category: the dtype both fit in
    frozenset({"uint8", "int32"}): "int32",
    frozenset({"uint8", "int64"}): "int64",
    frozenset({"int32", "int64"}): "int64",
    frozenset({"float32", "float64"}): "float64",
    # A 16-bit float with a wider one is the wider; float16 with bfloat16 is float32 (each
    # has values the other cannot hold), as in torch.
    frozenset({"float16", "bfloat16"}): "float32",
    **{frozenset({half, wide}): wide for half in HALFS for wide in FLOATS},
}


def set_promotion(rule: str) -> None:
    """Use PyTorch's ("torch") or NumPy's ("numpy") promotion from now on."""
    global _RULE
    if rule not in ("torch", "numpy"):
        raise ValueError(f"promotion rule must be 'torch' or 'numpy', got {rule!r}")
    _RULE = rule


def promotion() -> str:
    return _RULE


def default_float() -> str:
    """The dtype of a float result from integer operands."""
    return "float64" if _RULE == "numpy" else "float32"


def result_type(a: str, b: str) -> str:
    """The dtype of an elementwise operation on arrays of dtypes `a` and `b`."""
    if a == b:
        return a
    if _RULE == "numpy":
        return _supported(np.result_type(a, b).name)
    ca, cb = _CATEGORY[a], _CATEGORY[b]
    if ca != cb:
        return a if ca > cb else b
    return _WIDER[frozenset({a, b})]


def scalar_result_type(dtype: str, value) -> str:
    """The dtype of an elementwise operation on an array of `dtype` and the number `value`."""
    if _RULE == "numpy":
        if isinstance(value, np.generic):
            return _supported(np.result_type(dtype, value.dtype).name)
        return _supported(np.result_type(np.empty(0, dtype), _python(value)).name)
    if isinstance(value, (bool, np.bool_)):
        return dtype
    if isinstance(value, numbers.Integral):
        return "int64" if dtype == "bool" else dtype
    if dtype in FLOATING:
        return dtype
    return default_float()


def float_type(dtype: str) -> str:
    """The dtype a floating-point-only operation (division, exp, ...) computes `dtype` in:
    the 16-bit floats in float32 (NDArray rounds the result back)."""
    if dtype in HALFS:
        return "float32"
    return dtype if dtype in FLOATS else default_float()


def _python(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _supported(name: str) -> str:
    if name not in DTYPES:
        # NumPy promotes uint8 with int32... within ours; only exotic pairs leave the set.
        raise TypeError(f"the promoted dtype {name} is not supported by needle")
    return name
