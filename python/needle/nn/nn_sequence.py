"""Recurrent layers (RNN, LSTM) and Embedding, with the needle (CMU 10-714 hw4) API.

Sequences are (seq_len, batch, features), as in PyTorch with ``batch_first=False``. Weights
are stored input-major, (in_features, out_features), so a step is ``x @ W_ih + h @ W_hh``;
PyTorch's ``weight_ih_l0`` is the transpose.
"""

import math
from typing import Optional

import numpy as np

from needle import backend_ndarray as nd, init, ops
from needle.autograd import Tensor, array_device, array_of

# Sigmoid lives in nn_basic; it is imported here too because the course defines it in this file.
from .nn_basic import Parameter, Sigmoid, _DeviceModule  # noqa: F401

__all__ = ["RNNCell", "RNN", "LSTMCell", "LSTM", "Embedding"]


def _uniform(*shape, k: float, device, dtype) -> Parameter:
    return Parameter(
        init.rand(*shape, low=-k, high=k, device=device, dtype=dtype, requires_grad=True)
    )


def _add_bias(x: Tensor, bias: Optional[Tensor]) -> Tensor:
    """(batch, n) + (n,) broadcast over the batch."""
    if bias is None:
        return x
    return x + ops.broadcast_to(ops.reshape(bias, (1, bias.shape[0])), x.shape)


def _input_share(cell, X: Tensor):
    """x_t @ W_ih + b_ih + b_hh for every time step t of X (seq_len, batch, input) in one
    (seq_len * batch, input) @ (input, width) product, as torch does, split into the steps:
    an unrolled RNN then does only h @ W_hh per step."""
    seq_len, batch, size = X.shape
    flat = cell._input_share(ops.reshape(X, (seq_len * batch, size)))
    return ops.split(ops.reshape(flat, (seq_len, batch, flat.shape[1])), 0)


def _unroll(cells, X: Tensor, states, zero_state, output_of):
    """A stack of cells over the time steps of X (seq_len, batch, input), layer by layer: the
    input's share of every step in one product (_input_share), then cell.step(share, state)
    per step. `states` has one state per layer, or None for zero_state(X); output_of
    picks a step's output from its state. -> (the last layer's outputs stacked (seq_len,
    batch, hidden), each layer's final state)."""
    finals = []
    layer_input = X
    for cell, state in zip(cells, states):
        if state is None:
            state = zero_state(X)
        steps = _input_share(cell, layer_input)
        outputs = []
        for t in range(X.shape[0]):
            state = cell.step(steps[t], state)
            outputs.append(output_of(state))
        finals.append(state)
        layer_input = ops.stack(outputs, 0)
    return layer_input, finals


class _Cell(_DeviceModule):
    """What RNNCell and LSTMCell share: the weights of `gates` gate blocks of hidden_size,
    drawn from U(-k, k) with k = 1/sqrt(hidden_size), as PyTorch, in the course's order
    W_ih (input, gates * hidden), W_hh (hidden, gates * hidden), bias_ih, bias_hh."""

    def __init__(
        self, input_size: int, hidden_size: int, gates: int, bias: bool, device, dtype: str
    ):
        super().__init__(device, dtype)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        k, width = 1.0 / math.sqrt(hidden_size), gates * hidden_size
        self.W_ih = _uniform(input_size, width, k=k, device=device, dtype=dtype)
        self.W_hh = _uniform(hidden_size, width, k=k, device=device, dtype=dtype)
        self.bias_ih = _uniform(width, k=k, device=device, dtype=dtype) if bias else None
        self.bias_hh = _uniform(width, k=k, device=device, dtype=dtype) if bias else None

    def _input_share(self, X: Tensor) -> Tensor:
        """X @ W_ih plus the biases."""
        return _add_bias(_add_bias(X @ self.W_ih, self.bias_ih), self.bias_hh)


def _zeros(X: Tensor, hidden_size: int) -> Tensor:
    """A zero state (batch, hidden_size) for X. It still goes through W_hh, so that W_hh gets
    a (zero) gradient, as in torch: optimizers then see a gradient on every parameter."""
    return init.zeros(X.shape[-2], hidden_size, device=X.device, dtype=X.dtype)


class RNNCell(_Cell):
    """One Elman RNN step: h' = act(x @ W_ih + b_ih + h @ W_hh + b_hh).

    (batch, input_size), (batch, hidden_size) -> (batch, hidden_size).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype: str = "float32",
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"
            )
        super().__init__(input_size, hidden_size, 1, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, X: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """(batch, input_size), h (batch, hidden_size) or None for zeros -> (batch, hidden_size)."""
        return self.step(self._input_share(X), _zeros(X, self.hidden_size) if h is None else h)

    def step(self, input_share: Tensor, h: Tensor) -> Tensor:
        """h' from the input's share (X @ W_ih plus the biases) and the previous state."""
        out = input_share + h @ self.W_hh
        return ops.tanh(out) if self.nonlinearity == "tanh" else ops.relu(out)


class LSTMCell(_Cell):
    """One LSTM step with PyTorch's gate order (input, forget, cell, output).

    gates = x @ W_ih + b_ih + h @ W_hh + b_hh, split into i, f, g, o;
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g), h' = sigmoid(o) * tanh(c').
    X (batch, input_size), h = (h0, c0) each (batch, hidden_size) or None
    -> (h', c') each (batch, hidden_size).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype: str = "float32",
    ):
        super().__init__(input_size, hidden_size, 4, bias, device, dtype)

    def forward(
        self, X: Tensor, h: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, Tensor]:
        if h is None:
            zeros = _zeros(X, self.hidden_size)
            h = (zeros, zeros)
        return self.step(self._input_share(X), h)

    def step(self, input_gates: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(h', c') from the input's share of the gates (X @ W_ih plus the biases, which LSTM
        computes for every time step in one product) and the previous state (h, c)."""
        h0, c0 = state
        # The activations and the state update are one op (ops.lstm_state), not ~12.
        new_state = ops.split(ops.lstm_state(input_gates + h0 @ self.W_hh, c0), 0)
        return new_state[0], new_state[1]


class _Layers(_DeviceModule):
    """What RNN and LSTM share: their sizes and a list of cells, layer 0 first."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, device, dtype: str):
        super().__init__(device, dtype)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers

    def _cells(self, cell_type, **options) -> list:
        return [
            cell_type(
                self.input_size if layer == 0 else self.hidden_size,
                self.hidden_size,
                device=self.device,
                dtype=self.dtype,
                **options,
            )
            for layer in range(self.num_layers)
        ]


class RNN(_Layers):
    """A stack of `num_layers` RNNCells unrolled over the sequence.

    X (seq_len, batch, input_size), h0 (num_layers, batch, hidden_size) or None
    -> output (seq_len, batch, hidden_size) of the last layer, h_n (num_layers, batch, hidden_size).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype: str = "float32",
    ):
        super().__init__(input_size, hidden_size, num_layers, device, dtype)
        self.rnn_cells = self._cells(RNNCell, bias=bias, nonlinearity=nonlinearity)

    def forward(self, X: Tensor, h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        states = [None] * self.num_layers if h0 is None else list(ops.split(h0, 0))

        output, h_n = _unroll(
            self.rnn_cells, X, states, lambda X: _zeros(X, self.hidden_size), lambda h: h
        )
        return output, ops.stack(h_n, 0)


class LSTM(_Layers):
    """A stack of `num_layers` LSTMCells unrolled over the sequence.

    X (seq_len, batch, input_size), h = (h0, c0) each (num_layers, batch, hidden_size) or None
    -> output (seq_len, batch, hidden_size), (h_n, c_n) each (num_layers, batch, hidden_size).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        device=None,
        dtype: str = "float32",
    ):
        super().__init__(input_size, hidden_size, num_layers, device, dtype)
        self.lstm_cells = self._cells(LSTMCell, bias=bias)

    def forward(
        self, X: Tensor, h: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if h is None:
            states = [None] * self.num_layers
        else:
            h0, c0 = h
            states = list(zip(ops.split(h0, 0), ops.split(c0, 0)))

        def zero_state(X):
            zeros = _zeros(X, self.hidden_size)
            return zeros, zeros

        output, finals = _unroll(self.lstm_cells, X, states, zero_state, lambda s: s[0])
        return output, (ops.stack([h for h, _ in finals], 0), ops.stack([c for _, c in finals], 0))


class Embedding(_DeviceModule):
    """A lookup table of `num_embeddings` vectors of size `embedding_dim`, weights N(0, 1).

    Indices (seq_len, batch) -> (seq_len, batch, embedding_dim). The lookup gathers rows
    (ops.take_rows) and its gradient adds them back (scatter-add): a one-hot matmul would be
    a (seq_len * batch, num_embeddings) @ (num_embeddings, embedding_dim) product each way,
    ~20 ms of a PTB language-model step with its 10,000 words.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, device=None, dtype: str = "float32"
    ):
        super().__init__(device, dtype)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(
            init.randn(
                num_embeddings, embedding_dim, device=device, dtype=dtype, requires_grad=True
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        shape = tuple(x.shape)
        # Ids of any dtype (float32 in the NDArray mode, int or uint8 arrays), as the course's
        # .numpy().astype(int), checked on the host (through nd.from_host: a captured step
        # checks each call's ids).
        if isinstance(x, Tensor):
            device = array_device(self.weight)
            indices = nd.RowIndices.of(array_of(x), self.num_embeddings, device, True)
        else:
            indices = np.asarray(x).reshape(-1).astype(np.int64)  # checked by take_rows
        out = ops.take_rows(self.weight, indices)
        return ops.reshape(out, shape + (self.embedding_dim,))
