"""The elementwise part of an LSTM cell as one op.

Composed from Tensor ops, turning gate pre-activations into the cell's new state is ~12 ops
forward (reshape, split, four activations, three products, a sum) and ~30 backward, per cell
and time step: an unrolled 2-layer, 20-step language model runs 40 of them. Here it is one
primitive (lstm_cell: one pass over the gates, fused in the C++ backend), and so is its
gradient (lstm_cell_grad) when no graph is being recorded (``backward()`` without
``create_graph``); with a graph the gradient is built from Tensor ops, so gradients of
gradients still work.
"""

from ..autograd import Saved, Tensor, TensorOp, array_of, is_grad_enabled
from ..backend_ndarray import NDArray
from ..backend_ndarray.dtypes import float_type, result_type
from .ops_mathematic import reshape, sigmoid, split, stack, tanh

__all__ = ["LSTMState", "lstm_state"]


class LSTMState(TensorOp):
    """(h', c') of an LSTM cell, stacked as (2, batch, hidden), from the gate
    pre-activations (batch, 4 * hidden) in the order i, f, g, o and the previous cell state c
    (batch, hidden): c' = sigmoid(f) * c + sigmoid(i) * tanh(g), h' = sigmoid(o) * tanh(c').
    """

    name = "lstm_state"

    def compute(self, gates: NDArray, c: NDArray):
        batch, width = gates.shape
        hidden = width // 4
        if width != 4 * hidden or c.shape != (batch, hidden):
            raise ValueError(
                f"needs gates (batch, 4 * hidden) and c (batch, hidden), got "
                f"{gates.shape} and {c.shape}"
            )
        dtype = float_type(result_type(gates.dtype, c.dtype))
        c = c.astype(dtype)
        state, act = gates.astype(dtype).lstm_cell(c)  # the primitive lstm_cell: one pass
        return Saved(state, act=act, c=c)

    def gradient(self, out_grad: Tensor, node: Tensor):
        if not is_grad_enabled():
            return tuple(
                Tensor.make_const(d) for d in self._gradient_data(array_of(out_grad), node.saved)
            )
        return self._gradient_tensors(out_grad, *node.inputs)

    @staticmethod
    def _gradient_data(dy: NDArray, saved):
        """The gradients as NDArrays, from the forward's activations: lstm_cell_grad."""
        return dy.astype(saved.act.dtype).lstm_cell_grad(saved.act, saved.c)

    @staticmethod
    def _gradient_tensors(dy: Tensor, gates: Tensor, c: Tensor):
        """The same gradients as Tensor ops from the inputs, so that they are differentiable."""
        batch, width = gates.shape
        hidden = width // 4
        pre = split(reshape(gates, (batch, 4, hidden)), 1)
        i, f, g, o = sigmoid(pre[0]), sigmoid(pre[1]), tanh(pre[2]), sigmoid(pre[3])
        tanh_c = tanh(f * c + i * g)
        d_h, d_c_new = split(dy, 0)
        d_c = d_c_new + d_h * o * (1.0 - tanh_c * tanh_c)
        d_gates = stack(
            [
                d_c * g * i * (1.0 - i),
                d_c * c * f * (1.0 - f),
                d_c * i * (1.0 - g * g),
                d_h * tanh_c * o * (1.0 - o),
            ],
            1,
        )
        return reshape(d_gates, (batch, width)), d_c * f


def lstm_state(gates, c):
    return LSTMState()(gates, c)
