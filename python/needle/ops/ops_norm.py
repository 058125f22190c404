"""Batch normalisation as one op.

Composed from Tensor ops, a training-mode batch norm is ~25 ops forward and ~40 backward
(sums, broadcasts, reshapes, powers), most of a ResNet-9 step's 770 ops. Here the forward is
one op on NDArrays. Its gradient is NDArray arithmetic too when no graph is being recorded
(``backward()`` without ``create_graph``, the training case), and Tensor ops otherwise, so
gradients of gradients still work.
"""

from typing import Optional

from ..autograd import NDArray, Tensor, TensorOp, is_grad_enabled
from .ops_mathematic import broadcast_to, reshape, summation

__all__ = ["BatchNorm", "batch_norm"]


class BatchNorm(TensorOp):
    """y = (x - mean) / sqrt(var + eps) * weight + bias for x (rows, features), with the mean
    and the biased variance of each feature over the rows; weight and bias are (features,).

    After compute, ``mean`` and ``var`` hold the batch statistics (for running averages).
    d/dbias = sum(dy), d/dweight = sum(dy * xhat), d/dx = weight / std * (dy - mean(dy) -
    xhat * mean(dy * xhat)), sums and means over the rows.
    """

    def __init__(self, eps: float = 1e-5):
        self.eps = eps
        self.mean: Optional[NDArray] = None
        self.var: Optional[NDArray] = None
        self._xhat: Optional[NDArray] = None
        self._inv_std: Optional[NDArray] = None

    def compute(self, x: NDArray, weight: NDArray, bias: NDArray):
        if x.ndim != 2 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
            raise ValueError(f"batch_norm needs x (rows, features) and weight and bias "
                             f"(features,), got {x.shape}, {weight.shape} and {bias.shape}")
        rows, features = x.shape
        mean = x.sum(axis=0) / rows
        centred = x - mean.reshape((1, features))
        var = (centred * centred).sum(axis=0) / rows
        inv_std = (var + self.eps) ** -0.5
        xhat = centred * inv_std.reshape((1, features))
        self.mean, self.var, self._xhat, self._inv_std = mean, var, xhat, inv_std
        return xhat * weight.reshape((1, features)) + bias.reshape((1, features))

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, weight, _ = node.inputs
        if not is_grad_enabled():
            return tuple(None if g is None else Tensor.make_const(g)
                         for g in self._gradient_data(out_grad.realize_cached_data(), x,
                                                      weight.realize_cached_data()))
        return self._gradient_tensors(out_grad, x, weight)

    def _gradient_data(self, dy: NDArray, x: Tensor, weight: NDArray):
        """The gradients as NDArrays, from the forward's normalised input."""
        rows, features = dy.shape
        d_bias = dy.sum(axis=0)
        d_weight = (dy * self._xhat).sum(axis=0)
        d_x = None
        if x.requires_grad:
            scale = (weight * self._inv_std).reshape((1, features))
            d_x = (dy - (d_bias / rows).reshape((1, features))
                   - self._xhat * (d_weight / rows).reshape((1, features))) * scale
        return d_x, d_weight, d_bias

    def _gradient_tensors(self, dy: Tensor, x: Tensor, weight: Tensor):
        """The same gradients as Tensor ops from x itself, so that they are differentiable."""
        rows, features = x.shape

        def rows_of(v: Tensor) -> Tensor:  # (features,) -> (rows, features)
            return broadcast_to(reshape(v, (1, features)), (rows, features))

        centred = x - rows_of(summation(x, (0,)) / rows)
        inv_std = (summation(centred * centred, (0,)) / rows + self.eps) ** -0.5
        xhat = centred * rows_of(inv_std)
        d_bias = summation(dy, (0,))
        d_weight = summation(dy * xhat, (0,))
        d_x = (dy - rows_of(d_bias / rows) - xhat * rows_of(d_weight / rows)) * rows_of(
            weight * inv_std)
        return d_x, d_weight, d_bias


def batch_norm(x, weight, bias, eps: float = 1e-5):
    return BatchNorm(eps)(x, weight, bias)
