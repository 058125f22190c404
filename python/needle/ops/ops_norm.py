"""Batch normalisation as one op.

Composed from Tensor ops, a training-mode batch norm is ~25 ops forward and ~40 backward
(sums, broadcasts, reshapes, powers), most of a ResNet-9 step's 770 ops. Here the forward is
one op on NDArrays. Its gradient is NDArray arithmetic too when no graph is being recorded
(``backward()`` without ``create_graph``, the training case), and Tensor ops otherwise, so
gradients of gradients still work.
"""

import functools

from ..autograd import Saved, Tensor, TensorOp, array_of, check_gradient_reads, is_grad_enabled
from ..backend_ndarray import HALFS, NDArray, in_float32, prod
from .ops_mathematic import broadcast_to, reshape, summation

__all__ = ["BatchNorm", "batch_norm"]


class BatchNorm(TensorOp):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, normalising each feature of x along
    `axis` (1: x is (rows, features) or (N, C, H, W)) over all the other axes, with the
    biased variance; weight and bias are (features,).

    The output node keeps the batch statistics as ``node.saved.mean`` and ``node.saved.var``
    (for running averages). d/dbias = sum(dy), d/dweight = sum(dy * xhat), d/dx = weight /
    std * (dy - mean(dy) - xhat * mean(dy * xhat)), sums and means over the normalised axes.
    """

    keeps_input_dtype = True

    name = "batch_norm"

    def __init__(self, eps: float = 1e-5, axis: int = 1):
        self.eps = eps
        self.axis = axis

    def _layout(self, shape):
        """(the axes normalised over, the per-feature broadcast shape, elements per feature)"""
        return _layout(tuple(shape), self.axis)[:3]

    def _rows(self, a: NDArray) -> NDArray:
        """a as (elements per feature, features): the feature axis moved last, a view when
        that is a's memory order (NCHW views of NHWC data, as nn.Conv returns), else a copy."""
        _, _, count, order, _, _ = _layout(a.shape, self.axis)
        return a.permute(order).compact().reshape((count, a.shape[order[-1]]))

    def _unrows(self, rows: NDArray, shape) -> NDArray:
        """_rows undone: a view of `rows` with `shape`."""
        _, _, _, _, moved, back = _layout(tuple(shape), self.axis)
        return rows.reshape(moved).permute(back)

    def computes_halves(self, arrays) -> bool:
        return arrays[0].dtype in HALFS and _native_norm(*arrays)  # 16-bit rows, float32 stats

    def compute(self, x: NDArray, weight: NDArray, bias: NDArray):
        if (
            x.ndim < 2
            or not -x.ndim <= self.axis < x.ndim
            or weight.shape != (x.shape[self.axis],)
            or bias.shape != weight.shape
        ):
            raise ValueError(
                f"needs x with features along axis {self.axis} and weight and "
                f"bias (features,), got {x.shape}, {weight.shape} and {bias.shape}"
            )
        # The arithmetic is on (elements per feature, features) rows: the per-feature
        # statistics are then sums over axis 0 and (1, features) broadcasts.
        rows = self._rows(x)
        count, features = rows.shape
        if _native_norm(rows, weight, bias):  # two passes for the statistics, one to apply
            stats = weight.dtype  # float32 for 16-bit x (as its weights)
            y = NDArray.make(rows.shape, device=x.device, dtype=x.dtype)
            mean, var = (NDArray.make((features,), device=x.device, dtype=stats) for _ in "mv")
            x.device.batch_norm_rows(
                rows._handle,
                weight.compact()._handle,
                bias.compact()._handle,
                y._handle,
                mean._handle,
                var._handle,
                count,
                features,
                self.eps,
            )
            inv_std = (var + self.eps) ** -0.5
            return Saved(self._unrows(y, x.shape), mean=mean, var=var, xhat=None, inv_std=inv_std)
        mean = rows.sum(axis=0) / count
        centred = rows - mean.reshape((1, features))
        var = (centred * centred).sum(axis=0) / count
        inv_std = (var + self.eps) ** -0.5
        xhat = centred * inv_std.reshape((1, features))
        y = xhat * weight.reshape((1, features)) + bias.reshape((1, features))
        return Saved(self._unrows(y, x.shape), mean=mean, var=var, xhat=xhat, inv_std=inv_std)

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, weight, _ = node.inputs
        dy, data, w = array_of(out_grad), array_of(x), array_of(weight)
        check_gradient_reads(data, w)  # (the NDArray paths below run no checked Tensor ops)
        # The forward ran batch_norm_rows on 16-bit rows (float32 weights): so does the gradient.
        saved = node.saved
        native = saved is not None and saved.xhat is None and dy.dtype == data.dtype in HALFS
        if native and not is_grad_enabled() and _native_norm(data, w, w):
            grads = self._gradient_data(dy, data, w, saved, x.requires_grad)
            return tuple(None if g is None else Tensor.make_const(g) for g in grads)
        if not is_grad_enabled():
            # 16-bit arrays in float32, as every op computes them (nd.in_float32).
            grads = in_float32(
                functools.partial(self._gradient_data, saved=node.saved, dx=x.requires_grad),
                array_of(out_grad),
                array_of(x),
                array_of(weight),
            )
            return tuple(None if g is None else Tensor.make_const(g) for g in grads)
        return self._gradient_tensors(out_grad, x, weight)

    def _gradient_data(self, dy: NDArray, x: NDArray, weight: NDArray, saved, dx: bool):
        """The gradients as NDArrays, from the forward's normalised input (dx: whether x
        needs its gradient)."""
        rows = self._rows(dy)
        count, features = rows.shape
        if saved.xhat is None:  # the forward's batch_norm_rows: its gradient primitive
            x_rows = self._rows(x)
            grad_x = NDArray.make(rows.shape, device=dy.device, dtype=dy.dtype)
            d_weight, d_bias = (
                NDArray.make((features,), device=dy.device, dtype=weight.dtype) for _ in "wb"
            )
            dy.device.batch_norm_rows_grad(
                rows._handle,
                x_rows._handle,
                saved.mean._handle,
                saved.inv_std.compact()._handle,
                weight.compact()._handle,
                grad_x._handle,
                d_weight._handle,
                d_bias._handle,
                count,
                features,
            )
            return (self._unrows(grad_x, dy.shape) if dx else None), d_weight, d_bias
        d_bias = rows.sum(axis=0)
        d_weight = (rows * saved.xhat).sum(axis=0)
        d_x = None
        if dx:
            scale = (weight * saved.inv_std).reshape((1, features))
            d_x = self._unrows(
                (
                    rows
                    - (d_bias / count).reshape((1, features))
                    - saved.xhat * (d_weight / count).reshape((1, features))
                )
                * scale,
                dy.shape,
            )
        return d_x, d_weight, d_bias

    def _gradient_tensors(self, dy: Tensor, x: Tensor, weight: Tensor):
        """The same gradients as Tensor ops from x itself, so that they are differentiable."""
        axes, keep, count = self._layout(x.shape)

        def spread(v: Tensor) -> Tensor:  # (features,) -> x's shape
            return broadcast_to(reshape(v, keep), x.shape)

        centred = x - spread(summation(x, axes) / count)
        inv_std = (summation(centred * centred, axes) / count + self.eps) ** -0.5
        xhat = centred * spread(inv_std)
        d_bias = summation(dy, axes)
        d_weight = summation(dy * xhat, axes)
        d_x = (dy - spread(d_bias / count) - xhat * spread(d_weight / count)) * spread(
            weight * inv_std
        )
        return d_x, d_weight, d_bias


@functools.lru_cache(maxsize=256)
def _layout(shape: tuple[int, ...], axis: int) -> tuple:
    """For a norm of `shape` along `axis`: (the axes normalised over, the per-feature broadcast
    shape, elements per feature, the axis order with the feature last, the shape in that
    order, the order back). Cached: eight BatchNorm layers ask 5 times each per step."""
    axis %= len(shape)
    axes = tuple(d for d in range(len(shape)) if d != axis)
    keep = tuple(n if d == axis else 1 for d, n in enumerate(shape))
    order = axes + (axis,)
    back = tuple(order.index(d) for d in range(len(shape)))
    return axes, keep, prod(shape) // shape[axis], order, tuple(shape[d] for d in order), back


def _native_norm(rows: NDArray, weight: NDArray, bias: NDArray) -> bool:
    """Whether the device runs batch_norm_rows itself, for these operands: one float dtype, or
    16-bit rows with float32 weights where the device lists the row in HALF_ROWS."""
    dtype = rows.dtype
    if not (isinstance(rows, NDArray) and rows.device.has("batch_norm_rows")):
        return False
    if dtype in HALFS:
        halves = rows.device.half_rows
        native = "batch_norm_rows" in halves and "batch_norm_rows_grad" in halves
        return native and weight.dtype == bias.dtype == "float32"
    return dtype in ("float32", "float64") and weight.dtype == dtype and bias.dtype == dtype


def batch_norm(x, weight, bias, eps: float = 1e-5, axis: int = 1):
    return BatchNorm(eps, axis)(x, weight, bias)
