"""MultiHeadAttention, AttentionLayer, TransformerLayer and Transformer against PyTorch.

The torch references below are written from the same structure as the needle modules
(pre-norm attention with bias-free projections, a pre-norm ReLU MLP, a learned positional
embedding) and read their weights from the needle module by parameter name, so outputs and
the gradients of every input and parameter can be compared.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
import needle.nn as nn

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-9, atol=1e-10)}
BATCH, HEADS, DIM_HEAD = 2, 2, 3


def _pair(shape, device, dtype, requires_grad=True):
    """The same random array as a needle Tensor and a torch tensor."""
    a = np.random.randn(*shape).astype(dtype)
    return (
        ndl.Tensor(a, device=device, dtype=dtype, requires_grad=requires_grad),
        torch.tensor(a, requires_grad=requires_grad),
    )


def _close(needle_value, torch_value, dtype):
    np.testing.assert_allclose(needle_value.numpy(), torch_value.detach().numpy(), **TOL[dtype])


def _backward_both(needle_out, torch_out, device, dtype):
    """Backpropagate sum(G * out) with the same random G through both graphs."""
    g = np.random.randn(*needle_out.shape).astype(dtype)
    (needle_out * ndl.Tensor(g, device=device, dtype=dtype, requires_grad=False)).sum().backward()
    (torch_out * torch.tensor(g)).sum().backward()


def _torch_params(module):
    """name -> torch leaf tensor holding a copy of that needle parameter."""
    return {
        name: torch.tensor(p.numpy(), requires_grad=True) for name, p in module.named_parameters()
    }


def _check_param_grads(module, params, dtype):
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        np.testing.assert_allclose(
            p.grad.numpy(), params[name].grad.numpy(), **TOL[dtype], err_msg=name
        )


def _check_against_torch(module, params, out, out_t, shape, inputs, device, dtype):
    """The needle output `out` has `shape` and matches torch's `out_t`; after backpropagating
    the same G through both, so do the gradients of the (needle, torch) `inputs` and of every
    parameter of `module` (whose torch copies are `params`)."""
    assert out.shape == shape
    _close(out, out_t, dtype)
    _backward_both(out, out_t, device, dtype)
    for a, a_t in inputs:
        _close(a.grad, a_t.grad, dtype)
    _check_param_grads(module, params, dtype)


# ---- torch references -----------------------------------------------------------------
def torch_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(d) + mask) v; the queries are the last `queries` keys."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        i, j = q.shape[-2], k.shape[-2]
        hidden = torch.triu(torch.ones(i, j, dtype=torch.bool), diagonal=j - i + 1)
        scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v, probs


def _layer_norm(x, P, name):
    return F.layer_norm(x, (x.shape[-1],), P[name + ".weight"], P[name + ".bias"], eps=1e-5)


def _linear(x, P, name):
    y = x @ P[name + ".weight"]
    return y + P[name + ".bias"] if name + ".bias" in P else y


def torch_attention_layer(P, prefix, q, k, v, num_head, dim_head, causal):
    def heads(x, which):
        b, length, _ = x.shape
        x = _linear(_layer_norm(x, P, f"{prefix}prenorm_{which}"), P, f"{prefix}{which}_projection")
        return x.reshape(b, length, num_head, dim_head).transpose(1, 2)

    out, _ = torch_attention(heads(q, "q"), heads(k, "k"), heads(v, "v"), causal)
    b, _, queries, _ = out.shape
    out = out.transpose(1, 2).reshape(b, queries, num_head * dim_head)
    return _linear(out, P, f"{prefix}out_projection")


def torch_transformer_layer(P, prefix, x, num_head, dim_head, causal):
    x = x + torch_attention_layer(P, prefix + "attention.", x, x, x, num_head, dim_head, causal)
    y = torch.relu(_linear(_layer_norm(x, P, prefix + "layernorm"), P, prefix + "linear1"))
    return x + _linear(y, P, prefix + "linear2")


def torch_transformer(P, x, num_layers, num_head, dim_head, causal, batch_first):
    if not batch_first:
        x = x.transpose(0, 1)
    x = x + P["positional_embedding.weight"][: x.shape[1]]
    for layer in range(num_layers):
        x = torch_transformer_layer(P, f"layers.modules.{layer}.", x, num_head, dim_head, causal)
    return x if batch_first else x.transpose(0, 1)


# ---- MultiHeadAttention ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("queries, keys", [(4, 4), (3, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention_matches_torch(device, causal, queries, keys, dtype):
    attn = nn.MultiHeadAttention(causal=causal, device=device, dtype=dtype)
    q, q_t = _pair((BATCH, HEADS, queries, DIM_HEAD), device, dtype)
    k, k_t = _pair((BATCH, HEADS, keys, DIM_HEAD), device, dtype)
    v, v_t = _pair((BATCH, HEADS, keys, DIM_HEAD), device, dtype)

    (out, probs), (out_t, probs_t) = attn(q, k, v), torch_attention(q_t, k_t, v_t, causal)
    assert out.shape == (BATCH, HEADS, queries, DIM_HEAD)
    assert probs.shape == (BATCH, HEADS, queries, keys)
    _close(out, out_t, dtype)
    _close(probs, probs_t, dtype)
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, **TOL[dtype])
    if causal:  # nothing attends to a later key
        hidden = np.triu(np.ones((queries, keys), dtype=bool), keys - queries + 1)
        assert np.all(probs.numpy()[..., hidden] == 0)
    if causal and queries == keys:
        sdpa = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True)
        _close(out, sdpa, dtype)

    _backward_both(out, out_t, device, dtype)
    _close(q.grad, q_t.grad, dtype)
    _close(k.grad, k_t.grad, dtype)
    _close(v.grad, v_t.grad, dtype)


def test_multihead_attention_softmax_is_stable(device):
    """Scores far beyond exp's float32 range still give finite, correct weights."""
    attn = nn.MultiHeadAttention(device=device)
    q, q_t = _pair((1, 1, 3, 2), device, "float32")
    k, k_t = _pair((1, 1, 4, 2), device, "float32")
    v, v_t = _pair((1, 1, 4, 2), device, "float32")
    q, q_t = q * 300, q_t * 300
    out, probs = attn(q, k, v)
    out_t, _probs_t = torch_attention(q_t, k_t, v_t, False)
    assert np.isfinite(probs.numpy()).all()
    _close(out, out_t, "float32")


def test_multihead_attention_dropout(device):
    """In training, dropped weights are zero and kept ones scaled by 1/(1-p); in eval the
    layer is plain attention."""
    p = 0.5
    attn = nn.MultiHeadAttention(dropout=p, causal=False, device=device)
    q, q_t = _pair((BATCH, HEADS, 8, DIM_HEAD), device, "float32")
    k, k_t = _pair((BATCH, HEADS, 8, DIM_HEAD), device, "float32")
    v, v_t = _pair((BATCH, HEADS, 8, DIM_HEAD), device, "float32")
    out_t, probs_t = torch_attention(q_t, k_t, v_t, False)

    attn.train()
    out, probs = attn(q, k, v)
    probs, expected = probs.numpy(), probs_t.detach().numpy()
    kept = probs != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(probs[kept], expected[kept] / (1 - p), rtol=1e-5)
    np.testing.assert_allclose(out.numpy(), probs @ v.numpy(), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert q.grad.shape == q.shape

    attn.eval()
    out, probs = attn(q, k, v)
    _close(out, out_t, "float32")
    _close(probs, probs_t, "float32")


def test_causal_mask_values(device):
    mask = nn.MultiHeadAttention(device=device).create_causal_mask(3, 3, device)
    assert mask.shape == (1, 1, 3, 3)
    m = mask.numpy()[0, 0]
    assert np.all(m[np.tril_indices(3)] == 0) and np.all(m[np.triu_indices(3, 1)] < -1e30)


# ---- AttentionLayer -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_self_attention(device, causal, dtype):
    features, length = 6, 5
    layer = nn.AttentionLayer(features, HEADS, DIM_HEAD, causal=causal, device=device, dtype=dtype)
    names = {name for name, _ in layer.named_parameters()}
    assert {
        "q_projection.weight",
        "k_projection.weight",
        "v_projection.weight",
        "out_projection.weight",
        "prenorm_q.weight",
    } <= names
    assert not any(name.endswith("projection.bias") for name in names)
    P = _torch_params(layer)
    x, x_t = _pair((BATCH, length, features), device, dtype)

    out_t = torch_attention_layer(P, "", x_t, x_t, x_t, HEADS, DIM_HEAD, causal)
    _check_against_torch(layer, P, layer(x), out_t, x.shape, [(x, x_t)], device, dtype)


def test_attention_layer_cross_attention(device, dtype="float32"):
    """Different feature sizes for q, k, v and the output, and more keys than queries."""
    q_features, k_features, v_features, out_features = 6, 4, 5, 7
    layer = nn.AttentionLayer(
        q_features,
        HEADS,
        DIM_HEAD,
        out_features=out_features,
        k_features=k_features,
        v_features=v_features,
        causal=True,
        device=device,
    )
    P = _torch_params(layer)
    q, q_t = _pair((BATCH, 3, q_features), device, dtype)
    k, k_t = _pair((BATCH, 5, k_features), device, dtype)
    v, v_t = _pair((BATCH, 5, v_features), device, dtype)

    out_t = torch_attention_layer(P, "", q_t, k_t, v_t, HEADS, DIM_HEAD, True)
    inputs = [(q, q_t), (k, k_t), (v, v_t)]
    _check_against_torch(
        layer, P, layer(q, k, v), out_t, (BATCH, 3, out_features), inputs, device, dtype
    )


# ---- TransformerLayer and Transformer -------------------------------------------------
EMB = 6  # the embedding size of the Transformers below


def _transformer(device, num_layers, **options):
    """A Transformer of EMB features, 8 hidden units, HEADS heads of DIM_HEAD and (unless
    `options` say otherwise) 16 positions."""
    options = {"sequence_len": 16, **options}
    return nn.Transformer(
        EMB, 8, num_layers, num_head=HEADS, dim_head=DIM_HEAD, device=device, **options
    )


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_layer_matches_torch(device, causal, dtype="float32"):
    features, hidden, length = 6, 10, 5
    layer = nn.TransformerLayer(
        features, HEADS, DIM_HEAD, hidden, causal=causal, device=device, dtype=dtype
    )
    P = _torch_params(layer)
    x, x_t = _pair((BATCH, length, features), device, dtype)

    out_t = torch_transformer_layer(P, "", x_t, HEADS, DIM_HEAD, causal)
    _check_against_torch(layer, P, layer(x), out_t, x.shape, [(x, x_t)], device, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_transformer_matches_torch(device, batch_first, dtype):
    num_layers, length = 2, 5
    model = _transformer(device, num_layers, dtype=dtype, batch_first=batch_first)
    P = _torch_params(model)
    shape = (BATCH, length, EMB) if batch_first else (length, BATCH, EMB)
    x, x_t = _pair(shape, device, dtype)

    out, h = model(x)
    assert h.shape == shape and np.all(h.numpy() == 0)
    out_t = torch_transformer(P, x_t, num_layers, HEADS, DIM_HEAD, True, batch_first)
    _check_against_torch(model, P, out, out_t, shape, [(x, x_t)], device, dtype)
    # Only the positions used get a gradient.
    assert np.all(model.positional_embedding.weight.grad.numpy()[length:] == 0)


def test_transformer_not_causal(device, dtype="float32"):
    model = _transformer(device, 1, causal=False, sequence_len=8)
    P = _torch_params(model)
    x, x_t = _pair((4, BATCH, EMB), device, dtype)
    out, _ = model(x)
    _close(out, torch_transformer(P, x_t, 1, HEADS, DIM_HEAD, False, False), dtype)


def test_transformer_dropout_train_and_eval(device):
    """With dropout > 0, training mode is random and differentiable; eval mode is the
    deterministic dropout-free model."""
    model = _transformer(device, 2, dropout=0.5)
    P = _torch_params(model)
    x, x_t = _pair((5, BATCH, EMB), device, "float32")

    model.eval()
    out, _ = model(x)
    _close(out, torch_transformer(P, x_t, 2, HEADS, DIM_HEAD, True, False), "float32")

    model.train()
    first, _ = model(x)
    second, _ = model(x)
    assert not np.allclose(first.numpy(), out.numpy())
    assert not np.allclose(first.numpy(), second.numpy())
    first.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and np.isfinite(p.grad.numpy()).all()


def test_transformer_rejects_long_sequences(device):
    model = nn.Transformer(4, 8, 1, num_head=1, dim_head=4, device=device, sequence_len=3)
    with pytest.raises(ValueError):
        model(ndl.Tensor(np.zeros((4, 1, 4)), device=device))
