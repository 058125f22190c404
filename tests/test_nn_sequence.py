"""RNNCell, RNN, LSTMCell, LSTM and Embedding against PyTorch, forward and backward.

Each test builds the needle module, copies its weights into the matching torch module
(torch stores W_ih as (hidden, input), needle as (input, hidden)), runs both on the same
input and compares outputs, final states and the gradients of a random linear functional
with respect to the inputs, initial states and every weight.
"""

import math

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn

SEQ_LEN, BATCH, INPUT, HIDDEN = 4, 3, 5, 6
TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-9, atol=1e-10)}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


def _pair(shape, device, dtype, requires_grad=True):
    """The same random array as a needle Tensor and a torch tensor."""
    a = np.random.randn(*shape).astype(dtype)
    return (
        ndl.Tensor(a, device=device, dtype=dtype, requires_grad=requires_grad),
        torch.tensor(a, requires_grad=requires_grad),
    )


def _lstm_state(shape, device, dtype, with_h):
    """Random (h0, c0) as needle and torch tuples, or (None, None) without."""
    if not with_h:
        return None, None
    (h0, h0_t), (c0, c0_t) = _pair(shape, device, dtype), _pair(shape, device, dtype)
    return (h0, c0), (h0_t, c0_t)


def _backward(outputs, device, dtype):
    """Back-propagate sum(G_i * output_i) with fixed random G_i through needle and torch, so
    every output element gets a different adjoint. `outputs`: (needle, torch) pairs."""
    needle_loss, torch_loss = None, None
    for needle_out, torch_out in outputs:
        g = np.random.randn(*needle_out.shape).astype(dtype)
        n = (needle_out * ndl.Tensor(g, device=device, dtype=dtype, requires_grad=False)).sum()
        t = (torch_out * torch.tensor(g)).sum()
        needle_loss = n if needle_loss is None else needle_loss + n
        torch_loss = t if torch_loss is None else torch_loss + t
    needle_loss.backward()
    torch_loss.backward()


def _close_grads(inputs, dtype):
    """The gradients of (needle, torch) input pairs agree; absent inputs (None) are skipped."""
    for needle_in, torch_in in inputs:
        if needle_in is not None:
            _close(needle_in.grad, torch_in.grad, dtype)


def _close(needle_value, torch_value, dtype, transpose=False):
    expected = torch_value.detach().numpy()
    np.testing.assert_allclose(
        needle_value.numpy(), expected.T if transpose else expected, **TOL[dtype]
    )


def _copy_cell_weights(cell, torch_module, suffix=""):
    """Needle cell -> torch parameters named weight_ih{suffix}, ..., bias_hh{suffix}."""
    with torch.no_grad():
        getattr(torch_module, "weight_ih" + suffix).copy_(torch.tensor(cell.W_ih.numpy().T))
        getattr(torch_module, "weight_hh" + suffix).copy_(torch.tensor(cell.W_hh.numpy().T))
        if cell.bias_ih is not None:
            getattr(torch_module, "bias_ih" + suffix).copy_(torch.tensor(cell.bias_ih.numpy()))
            getattr(torch_module, "bias_hh" + suffix).copy_(torch.tensor(cell.bias_hh.numpy()))


def _check_cell_grads(cell, torch_module, dtype, suffix=""):
    _close(cell.W_ih.grad, getattr(torch_module, "weight_ih" + suffix).grad, dtype, True)
    _close(cell.W_hh.grad, getattr(torch_module, "weight_hh" + suffix).grad, dtype, True)
    if cell.bias_ih is not None:
        _close(cell.bias_ih.grad, getattr(torch_module, "bias_ih" + suffix).grad, dtype)
        _close(cell.bias_hh.grad, getattr(torch_module, "bias_hh" + suffix).grad, dtype)


# ---- RNN ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_h", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_matches_torch(device, nonlinearity, bias, with_h, dtype):
    cell = nn.RNNCell(
        INPUT, HIDDEN, bias=bias, nonlinearity=nonlinearity, device=device, dtype=dtype
    )
    ref = torch.nn.RNNCell(
        INPUT, HIDDEN, bias=bias, nonlinearity=nonlinearity, dtype=TORCH_DTYPE[dtype]
    )
    _copy_cell_weights(cell, ref)
    x, x_t = _pair((BATCH, INPUT), device, dtype)
    h, h_t = _pair((BATCH, HIDDEN), device, dtype) if with_h else (None, None)

    out, out_t = cell(x, h), ref(x_t, h_t)
    assert out.shape == (BATCH, HIDDEN) and out.dtype == dtype
    _close(out, out_t, dtype)

    _backward([(out, out_t)], device, dtype)
    _close_grads([(x, x_t), (h, h_t)], dtype)
    _check_cell_grads(cell, ref, dtype)


@pytest.mark.parametrize("with_h", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_rnn_matches_torch(device, num_layers, nonlinearity, bias, with_h, dtype="float32"):
    model = nn.RNN(
        INPUT,
        HIDDEN,
        num_layers=num_layers,
        bias=bias,
        nonlinearity=nonlinearity,
        device=device,
        dtype=dtype,
    )
    ref = torch.nn.RNN(
        INPUT,
        HIDDEN,
        num_layers=num_layers,
        bias=bias,
        nonlinearity=nonlinearity,
        dtype=TORCH_DTYPE[dtype],
    )
    assert len(model.rnn_cells) == num_layers
    for layer, cell in enumerate(model.rnn_cells):
        _copy_cell_weights(cell, ref, f"_l{layer}")
    x, x_t = _pair((SEQ_LEN, BATCH, INPUT), device, dtype)
    h0, h0_t = _pair((num_layers, BATCH, HIDDEN), device, dtype) if with_h else (None, None)

    (out, h_n), (out_t, h_n_t) = model(x, h0), ref(x_t, h0_t)
    assert out.shape == (SEQ_LEN, BATCH, HIDDEN)
    assert h_n.shape == (num_layers, BATCH, HIDDEN)
    _close(out, out_t, dtype)
    _close(h_n, h_n_t, dtype)

    _backward([(out, out_t), (h_n, h_n_t)], device, dtype)
    _close_grads([(x, x_t), (h0, h0_t)], dtype)
    for layer, cell in enumerate(model.rnn_cells):
        _check_cell_grads(cell, ref, dtype, f"_l{layer}")


def test_rnn_float64(device):
    test_rnn_matches_torch(device, 2, "tanh", True, True, dtype="float64")


def test_rnn_cell_init_and_parameters(device):
    cell = nn.RNNCell(INPUT, HIDDEN, device=device)
    k = 1 / math.sqrt(HIDDEN)
    assert cell.W_ih.shape == (INPUT, HIDDEN) and cell.W_hh.shape == (HIDDEN, HIDDEN)
    assert cell.bias_ih.shape == (HIDDEN,) and cell.bias_hh.shape == (HIDDEN,)
    for p in cell.parameters():
        assert p.device == device and p.dtype == "float32"
        assert np.all(np.abs(p.numpy()) <= k)
    assert len(cell.parameters()) == 4
    assert len(nn.RNNCell(INPUT, HIDDEN, bias=False, device=device).parameters()) == 2
    assert len(nn.RNN(INPUT, HIDDEN, num_layers=3, device=device).parameters()) == 12
    with pytest.raises(ValueError):
        nn.RNNCell(INPUT, HIDDEN, nonlinearity="sigmoid")


# ---- LSTM -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_h", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_lstm_cell_matches_torch(device, bias, with_h, dtype):
    cell = nn.LSTMCell(INPUT, HIDDEN, bias=bias, device=device, dtype=dtype)
    ref = torch.nn.LSTMCell(INPUT, HIDDEN, bias=bias, dtype=TORCH_DTYPE[dtype])
    _copy_cell_weights(cell, ref)
    x, x_t = _pair((BATCH, INPUT), device, dtype)
    state, state_t = _lstm_state((BATCH, HIDDEN), device, dtype, with_h)

    (h, c), (h_t, c_t) = cell(x, state), ref(x_t, state_t)
    assert h.shape == c.shape == (BATCH, HIDDEN)
    _close(h, h_t, dtype)
    _close(c, c_t, dtype)

    _backward([(h, h_t), (c, c_t)], device, dtype)
    _close_grads([(x, x_t), *zip(state or (), state_t or ())], dtype)
    _check_cell_grads(cell, ref, dtype)


@pytest.mark.parametrize("with_h", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_matches_torch(device, num_layers, bias, with_h, dtype="float32"):
    model = nn.LSTM(INPUT, HIDDEN, num_layers=num_layers, bias=bias, device=device, dtype=dtype)
    ref = torch.nn.LSTM(INPUT, HIDDEN, num_layers=num_layers, bias=bias, dtype=TORCH_DTYPE[dtype])
    assert len(model.lstm_cells) == num_layers
    for layer, cell in enumerate(model.lstm_cells):
        _copy_cell_weights(cell, ref, f"_l{layer}")
    x, x_t = _pair((SEQ_LEN, BATCH, INPUT), device, dtype)
    state, state_t = _lstm_state((num_layers, BATCH, HIDDEN), device, dtype, with_h)

    (out, (h_n, c_n)), (out_t, (h_n_t, c_n_t)) = model(x, state), ref(x_t, state_t)
    assert out.shape == (SEQ_LEN, BATCH, HIDDEN)
    assert h_n.shape == c_n.shape == (num_layers, BATCH, HIDDEN)
    _close(out, out_t, dtype)
    _close(h_n, h_n_t, dtype)
    _close(c_n, c_n_t, dtype)

    _backward([(out, out_t), (h_n, h_n_t), (c_n, c_n_t)], device, dtype)
    _close_grads([(x, x_t), *zip(state or (), state_t or ())], dtype)
    for layer, cell in enumerate(model.lstm_cells):
        _check_cell_grads(cell, ref, dtype, f"_l{layer}")


def test_lstm_float64(device):
    test_lstm_matches_torch(device, 2, True, True, dtype="float64")


def test_lstm_cell_init_and_parameters(device):
    cell = nn.LSTMCell(INPUT, HIDDEN, device=device, dtype="float64")
    k = 1 / math.sqrt(HIDDEN)
    assert cell.W_ih.shape == (INPUT, 4 * HIDDEN) and cell.W_hh.shape == (HIDDEN, 4 * HIDDEN)
    assert cell.bias_ih.shape == (4 * HIDDEN,) and cell.bias_hh.shape == (4 * HIDDEN,)
    for p in cell.parameters():
        assert p.device == device and p.dtype == "float64"
        assert np.all(np.abs(p.numpy()) <= k)
    assert len(nn.LSTM(INPUT, HIDDEN, num_layers=2, bias=False, device=device).parameters()) == 4


def test_rnn_graph_reaches_all_weights(device):
    """A training step touches every parameter of a multi-layer LSTM and RNN."""
    for model in (
        nn.LSTM(INPUT, HIDDEN, num_layers=2, device=device),
        nn.RNN(INPUT, HIDDEN, num_layers=2, device=device),
    ):
        x = ndl.Tensor(np.random.randn(SEQ_LEN, BATCH, INPUT), device=device)
        out = model(x)[0]
        out.sum().backward()
        for p in model.parameters():
            assert p.grad is not None and p.grad.shape == p.shape


# ---- Embedding ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_matches_torch(device, dtype):
    num, dim = 7, 4
    emb = nn.Embedding(num, dim, device=device, dtype=dtype)
    assert emb.weight.shape == (num, dim) and emb.weight.dtype == dtype
    ref = torch.nn.Embedding(num, dim, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(emb.weight.numpy()))
    idx = np.random.randint(0, num, size=(SEQ_LEN, BATCH))
    idx[0, 0] = idx[1, 1]  # a repeated index: its gradient rows add up
    out = emb(ndl.Tensor(idx, device=device, dtype=dtype, requires_grad=False))
    out_t = ref(torch.tensor(idx))
    assert out.shape == (SEQ_LEN, BATCH, dim)
    _close(out, out_t, dtype)

    _backward([(out, out_t)], device, dtype)
    _close(emb.weight.grad, ref.weight.grad, dtype)


def test_embedding_init_is_standard_normal(device):
    weight = nn.Embedding(200, 50, device=device).weight.numpy()
    assert abs(weight.mean()) < 0.05 and abs(weight.std() - 1) < 0.05


def test_embedding_feeds_lstm(device):
    """The course's language-model wiring: Embedding -> LSTM -> Linear over the vocabulary."""
    vocab, dim = 9, 4
    emb = nn.Embedding(vocab, dim, device=device)
    lstm = nn.LSTM(dim, HIDDEN, device=device)
    head = nn.Linear(HIDDEN, vocab, device=device)
    idx = ndl.Tensor(np.random.randint(0, vocab, size=(SEQ_LEN, BATCH)), device=device)
    out, (_h, _c) = lstm(emb(idx))
    logits = head(out.reshape((SEQ_LEN * BATCH, HIDDEN)))
    loss = nn.SoftmaxLoss()(
        logits, ndl.Tensor(np.random.randint(0, vocab, SEQ_LEN * BATCH), device=device)
    )
    loss.backward()
    assert emb.weight.grad is not None and np.isfinite(emb.weight.grad.numpy()).all()
