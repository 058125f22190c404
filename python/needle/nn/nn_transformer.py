"""Multi-head attention and a pre-norm Transformer, with the needle (CMU 10-714 hw4) API.

Attention works on (batch, num_head, length, dim_head); the layers on (batch, length,
features); ``Transformer`` takes (seq_len, batch, features) unless ``batch_first``.
"""

import math
from typing import Optional

import numpy as np

from needle import backend_ndarray as ndarray, init, ops
from needle.autograd import Tensor, array_of
from needle.backend_selection import BACKEND

from .nn_basic import Dropout, LayerNorm1d, Linear, ReLU, Sequential, _DeviceModule
from .nn_sequence import Embedding

__all__ = ["MultiHeadAttention", "AttentionLayer", "TransformerLayer", "Transformer"]


class MultiHeadAttention(_DeviceModule):
    """Scaled dot-product attention over already projected heads.

    q (batch, num_head, queries, dim), k and v (batch, num_head, keys, dim)
    -> (result (batch, num_head, queries, dim), probs (batch, num_head, queries, keys)).
    With `causal`, query i sees keys up to i + (keys - queries) (the queries are the last
    ones of the key sequence). `probs` are the attention weights after dropout, as torch
    returns them.
    """

    def __init__(
        self, *, dropout: float = 0.0, causal: bool = False, device=None, dtype: str = "float32"
    ):
        super().__init__(device, dtype)
        self.causal = causal
        self.dropout = Dropout(dropout)

    def create_causal_mask(self, i: int, j: int, device, dtype: str = "float32"):
        """(1, 1, i, j) array: 0 where query may see key, -(float32 max) where the key index
        exceeds the query index + j - i. An NDArray on `device` in the NDArray mode, a NumPy
        array in the numpy mode.

        The largest finite float32 rather than -inf, so that a fully masked row still gives
        finite (uniform) weights instead of NaN from -inf - -inf.
        """
        mask = -np.finfo(np.float32).max * np.triu(
            np.ones((1, 1, i, j), dtype=np.float32), j - i + 1
        )
        if BACKEND == "np":
            return mask.astype(dtype)
        return ndarray.array(mask.astype(dtype), device=device)

    def matmul(self, a: Tensor, b_transpose: Tensor) -> Tensor:
        """a @ b_transpose^T over the last two axes: (..., m, d), (..., n, d) -> (..., m, n)."""
        return ops.matmul(a, ops.transpose(b_transpose, (-2, -1)))

    def softmax(self, logit: Tensor) -> Tensor:
        """Softmax over the last axis."""
        # Shift by the row max so exp() cannot overflow; the shift cancels in the ratio, so
        # the max needs no gradient and is taken as a constant.
        data = array_of(logit)
        shift = Tensor.make_const(data.max(axis=-1, keepdims=True).broadcast_to(logit.shape))
        probs = ops.exp(logit - shift)
        kept = logit.shape[:-1] + (1,)
        denom = ops.broadcast_to(ops.reshape(ops.summation(probs, (-1,)), kept), logit.shape)
        return probs / denom

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        _batch_size, _num_head, queries_len, q_dim = q.shape
        _, _, keys_values_len, k_dim = k.shape
        _, _, _, v_dim = v.shape
        if not q_dim == k_dim == v_dim:
            raise ValueError(
                f"MultiHeadAttention: q, k, v need the same head size, got "
                f"{q_dim}, {k_dim}, {v_dim}"
            )
        scores = self.matmul(q, k) / math.sqrt(q_dim)
        if self.causal:
            mask = self.create_causal_mask(queries_len, keys_values_len, q.device, q.dtype)
            scores = scores + ops.broadcast_to(Tensor.make_const(mask), scores.shape)
        probs = self.dropout(self.softmax(scores))
        return ops.matmul(probs, v), probs


class AttentionLayer(_DeviceModule):
    """Pre-norm multi-head attention: LayerNorm, bias-free projections, attention, output
    projection.

    q (batch, queries, q_features), k (batch, keys, k_features) and v (batch, keys,
    v_features), k and v defaulting to q -> (batch, queries, out_features).
    """

    def __init__(
        self,
        q_features: int,
        num_head: int,
        dim_head: int,
        *,
        k_features: Optional[int] = None,
        v_features: Optional[int] = None,
        out_features: Optional[int] = None,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype: str = "float32",
    ):
        super().__init__(device, dtype)
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.q_features = q_features
        self.k_features = k_features
        self.v_features = v_features
        self.out_features = out_features
        self.num_head = num_head
        self.dim_head = dim_head
        inner_dim = num_head * dim_head
        self.prenorm_q = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.prenorm_k = LayerNorm1d(k_features, device=device, dtype=dtype)
        self.prenorm_v = LayerNorm1d(v_features, device=device, dtype=dtype)
        self.q_projection = Linear(q_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.k_projection = Linear(k_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.v_projection = Linear(v_features, inner_dim, bias=False, device=device, dtype=dtype)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, device=device, dtype=dtype)
        self.out_projection = Linear(
            inner_dim, out_features, bias=False, device=device, dtype=dtype
        )

    def _heads(self, x: Tensor, norm: LayerNorm1d, projection: Linear) -> Tensor:
        """(batch, length, features) -> (batch, num_head, length, dim_head)."""
        batch, length, features = x.shape
        x = projection(norm(ops.reshape(x, (batch * length, features))))
        x = ops.reshape(x, (batch, length, self.num_head, self.dim_head))
        return ops.transpose(x, (1, 2))

    def forward(self, q: Tensor, k: Optional[Tensor] = None, v: Optional[Tensor] = None) -> Tensor:
        k = q if k is None else k
        v = q if v is None else v
        batch_size, queries_len, _ = q.shape
        result, _ = self.attn(
            self._heads(q, self.prenorm_q, self.q_projection),
            self._heads(k, self.prenorm_k, self.k_projection),
            self._heads(v, self.prenorm_v, self.v_projection),
        )
        # (batch, num_head, queries, dim_head) -> (batch * queries, num_head * dim_head)
        result = ops.reshape(
            ops.transpose(result, (1, 2)), (batch_size * queries_len, self.num_head * self.dim_head)
        )
        return ops.reshape(
            self.out_projection(result), (batch_size, queries_len, self.out_features)
        )


class TransformerLayer(_DeviceModule):
    """Pre-norm Transformer block, (batch, seq_len, q_features) -> the same shape:

    x = x + dropout(attention(x));
    x = x + dropout(linear2(dropout(relu(linear1(layernorm(x)))))).
    """

    def __init__(
        self,
        q_features: int,
        num_head: int,
        dim_head: int,
        hidden_size: int,
        *,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype: str = "float32",
    ):
        super().__init__(device, dtype)
        self.q_features = q_features
        self.attention = AttentionLayer(
            q_features,
            num_head,
            dim_head,
            dropout=dropout,
            causal=causal,
            device=device,
            dtype=dtype,
        )
        self.layernorm = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.linear1 = Linear(q_features, hidden_size, device=device, dtype=dtype)
        self.linear2 = Linear(hidden_size, q_features, device=device, dtype=dtype)
        self.relu = ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch_size, seq_len, x_dim = x.shape
        x = x + self.dropout(self.attention(x))
        y = self.layernorm(ops.reshape(x, (batch_size * seq_len, x_dim)))
        y = self.dropout(self.linear2(self.dropout(self.relu(self.linear1(y)))))
        return x + ops.reshape(y, (batch_size, seq_len, x_dim))


class Transformer(_DeviceModule):
    """A stack of TransformerLayers with a learned positional embedding.

    x (seq_len, batch, embedding_size), or (batch, seq_len, embedding_size) with
    `batch_first` -> (output of the same shape, zeros of that shape); the second value stands
    in for the hidden state of an RNN/LSTM, so language models can swap the sequence model.
    """

    def __init__(
        self,
        embedding_size: int,
        hidden_size: int,
        num_layers: int,
        *,
        num_head: int = 8,
        dim_head: int = 32,
        dropout: float = 0.0,
        causal: bool = True,
        device=None,
        dtype: str = "float32",
        batch_first: bool = False,
        sequence_len: int = 2048,
    ):
        super().__init__(device, dtype)
        self.batch_first = batch_first
        self.embedding_size = embedding_size
        self.sequence_len = sequence_len
        self.positional_embedding = Embedding(
            sequence_len, embedding_size, device=device, dtype=dtype
        )
        self.layers = Sequential(
            *[
                TransformerLayer(
                    embedding_size,
                    num_head,
                    dim_head,
                    hidden_size,
                    dropout=dropout,
                    causal=causal,
                    device=device,
                    dtype=dtype,
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, x: Tensor, h=None) -> tuple[Tensor, Tensor]:
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        _batch_size, seq_len, _ = x.shape
        if seq_len > self.sequence_len:
            raise ValueError(
                f"Transformer: sequence of length {seq_len} exceeds sequence_len="
                f"{self.sequence_len}"
            )
        # One embedding lookup per position, shared by the whole batch: (1, seq_len, emb).
        positions = Tensor(
            np.arange(seq_len).reshape(seq_len, 1),
            device=x.device,
            dtype=x.dtype,
            requires_grad=False,
        )
        pos = ops.transpose(self.positional_embedding(positions), (0, 1))
        x = self.layers(x + ops.broadcast_to(pos, x.shape))
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        return x, init.zeros_like(x)
