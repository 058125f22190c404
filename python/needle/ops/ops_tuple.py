"""Ops that make and take apart TensorTuples."""

from ..autograd import Tensor, TensorOp, TensorTuple, TensorTupleOp, array_of

__all__ = [
    "MakeTensorTuple",
    "make_tuple",
    "TupleGetItem",
    "tuple_get_item",
    "FusedAddScalars",
    "fused_add_scalars",
]


class MakeTensorTuple(TensorTupleOp):
    """(a, b, ...) -> TensorTuple; d/d(a_i) = out_grad[i]."""

    half_native = True

    name = "make_tuple"

    def compute(self, *args) -> tuple:
        return tuple(args)

    def gradient(self, out_grad, node):
        assert isinstance(out_grad, TensorTuple)
        return tuple(out_grad[i] for i in range(len(out_grad)))


def make_tuple(*args):
    return MakeTensorTuple()(*args)


class TupleGetItem(TensorOp):
    """t[index]; the adjoint is out_grad at `index` and zeros elsewhere."""

    half_native = True

    name = "tuple_get_item"

    def __init__(self, index: int):
        self.index = index

    def __call__(self, a: TensorTuple, fold_const: bool = True) -> Tensor:
        assert isinstance(a, TensorTuple)
        # Taking an element of a tuple we just made needs no node of its own.
        if fold_const and isinstance(a.op, MakeTensorTuple):
            return a.inputs[self.index]
        return Tensor.make_from_op(self, [a])

    def compute(self, a):
        return a[self.index]

    def gradient(self, out_grad, node):
        """The course's adjoint: a TensorTuple of out_grad at `index` and zeros elsewhere."""
        arrays = array_of(node.inputs[0])
        return make_tuple(
            *(
                out_grad
                if i == self.index
                else Tensor.make_const(a.device.full(a.shape, 0.0, a.dtype))
                for i, a in enumerate(arrays)
            )
        )

    def sparse_gradient(self, out_grad, node):
        """What backward uses instead: {index: out_grad}, which the tuple sums by element
        (TensorTuple._sum_adjoints), so taking each of n elements costs no n zeros each."""
        return {self.index: out_grad}


def tuple_get_item(value, index):
    return TupleGetItem(index)(value)


class FusedAddScalars(TensorTupleOp):
    """a -> (a + c0, a + c1); d/da = out_grad[0] + out_grad[1]."""

    name = "fused_add_scalars"

    def __init__(self, c0: float, c1: float):
        self.c0 = c0
        self.c1 = c1

    def compute(self, a):
        return a + self.c0, a + self.c1

    def gradient(self, out_grad, node):
        return out_grad[0] + out_grad[1]


def fused_add_scalars(x, c0, c1):
    return FusedAddScalars(c0, c1)(x)
