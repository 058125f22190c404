"""The issue-16 port check: a model written in torch, ported line by line to needle.

A small CNN (conv -> GroupNorm -> GELU -> MaxPool2d -> conv -> AvgPool2d, a ConvTranspose2d
decoder, an AdaptiveAvgPool2d + Linear head) and a small GPT block (LayerNorm, causal
self-attention through scaled_dot_product_attention, a GELU MLP, residuals) are each defined
once in torch and once in needle, with the same attribute names. The needle model starts
from torch's state_dict (through NumPy, in needle's layouts: nn.Conv keeps (k, k, in, out)
weights, nn.Linear (in, out) and a (1, out) bias); both take 3 optimizer steps on the same
batches, and then the loss, the outputs, every parameter and every parameter gradient must
agree with torch's to float32 tolerance.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
from needle import nn

TOL = dict(rtol=1e-4, atol=1e-5)
STEPS = 3


# ---- the torch models ----------------------------------------------------------------------
class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.act = torch.nn.GELU()
        self.pool = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.avg = torch.nn.AvgPool2d(2)
        self.up1 = torch.nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up2 = torch.nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)
        self.squeeze = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        z = self.avg(self.conv2(self.pool(self.act(self.norm(self.conv1(x))))))
        recon = self.up2(self.act(self.up1(z)))
        logits = self.head(self.squeeze(z).flatten(1))
        return logits, recon


class TorchGPTBlock(torch.nn.Module):
    def __init__(self, dim=16, heads=4, vocab=11):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(dim)
        # No bias: the key bias adds q . b_k to every score of a row, which softmax ignores,
        # so its gradient is zero up to rounding, and Adam would scale that rounding up to
        # lr-sized steps that differ between any two implementations.
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.fc = torch.nn.Linear(dim, 4 * dim)
        self.act = torch.nn.GELU(approximate="tanh")
        self.out = torch.nn.Linear(4 * dim, dim)
        self.ln_f = torch.nn.LayerNorm(dim)
        self.lm_head = torch.nn.Linear(dim, vocab)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (u.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for u in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        x = x + self.out(self.act(self.fc(self.ln2(x))))
        return self.lm_head(self.ln_f(x))


# ---- the same models in needle -------------------------------------------------------------
class NeedleCNN(nn.Module):
    def __init__(self, device):
        super().__init__()
        self.conv1 = nn.Conv(3, 8, 3, device=device)
        self.norm = nn.GroupNorm(2, 8, device=device)
        self.act = nn.GELU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv(8, 16, 3, device=device)
        self.avg = nn.AvgPool2d(2)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2, device=device)
        self.up2 = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1, device=device)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 5, device=device)

    def forward(self, x):
        z = self.avg(self.conv2(self.pool(self.act(self.norm(self.conv1(x))))))
        recon = self.up2(self.act(self.up1(z)))
        logits = self.head(self.squeeze(z).flatten(1))
        return logits, recon


class NeedleGPTBlock(nn.Module):
    def __init__(self, device, dim=16, heads=4, vocab=11):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim, device=device)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, device=device)
        self.proj = nn.Linear(dim, dim, device=device)
        self.ln2 = nn.LayerNorm(dim, device=device)
        self.fc = nn.Linear(dim, 4 * dim, device=device)
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(4 * dim, dim, device=device)
        self.ln_f = nn.LayerNorm(dim, device=device)
        self.lm_head = nn.Linear(dim, vocab, device=device)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (
            u.reshape((b, t, self.heads, c // self.heads)).transpose((1, 2)) for u in (q, k, v)
        )
        y = ndl.ops.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose((1, 2)).reshape((b, t, c)))
        x = x + self.out(self.act(self.fc(self.ln2(x))))
        return self.lm_head(self.ln_f(x))


# ---- torch layout <-> needle layout --------------------------------------------------------
def to_needle_layout(model, name, array):
    """A torch parameter (or gradient) `name` as `model` holds it."""
    owner = dict(model.named_modules())[name.rpartition(".")[0]]
    if isinstance(owner, nn.Conv) and name.endswith("weight"):
        return array.transpose(2, 3, 1, 0)  # (out, in, k, k) -> (k, k, in, out)
    if isinstance(owner, nn.Linear):
        return array.T if name.endswith("weight") else array.reshape(1, -1)
    return array


def port(model, torch_model):
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    assert list(model.state_dict()) == list(state)
    model.load_state_dict({k: to_needle_layout(model, k, v) for k, v in state.items()})


def compare_parameters(model, torch_model):
    ours = dict(model.named_parameters())
    theirs = dict(torch_model.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        t = theirs[name]
        want = to_needle_layout(model, name, t.detach().numpy())
        np.testing.assert_allclose(p.numpy(), want, **TOL, err_msg=f"{name} value")
        want_grad = to_needle_layout(model, name, t.grad.numpy())
        np.testing.assert_allclose(p.grad.numpy(), want_grad, **TOL, err_msg=f"{name} grad")


# ---- the check -----------------------------------------------------------------------------
def cnn_batches(rng):
    return [
        (rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 4))
        for _ in range(STEPS + 1)
    ]


def gpt_batches(rng):
    return [
        (rng.standard_normal((2, 6, 16)).astype(np.float32), rng.integers(0, 11, 12))
        for _ in range(STEPS + 1)
    ]


def cnn_loss(lib, model, x, y):
    """Cross-entropy of the head plus the decoder's reconstruction error."""
    logits, recon = model(x)
    loss = lib.CrossEntropyLoss()(logits, y) + lib.MSELoss()(recon, x)
    return loss, (logits, recon)


def gpt_loss(lib, model, x, y):
    logits = model(x)
    flat = logits.reshape((-1, logits.shape[-1]))
    return lib.CrossEntropyLoss(label_smoothing=0.1)(flat, y), (logits,)


MODELS = {
    "cnn": (TorchCNN, NeedleCNN, cnn_batches, cnn_loss),
    "gpt": (TorchGPTBlock, NeedleGPTBlock, gpt_batches, gpt_loss),
}
OPTIMIZERS = {
    "sgd": (
        lambda ps: torch.optim.SGD(ps, lr=0.05),
        lambda ps: ndl.optim.SGD(ps, lr=0.05),
    ),
    "adam": (
        lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
        lambda ps: ndl.optim.Adam(ps, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    ),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_port_matches_torch(device, model_name, optimizer, rng):
    torch_cls, needle_cls, batches, loss_fn = MODELS[model_name]
    torch.manual_seed(0)
    theirs = torch_cls()
    ours = needle_cls(device)
    port(ours, theirs)
    opt_t = OPTIMIZERS[optimizer][0](theirs.parameters())
    opt = OPTIMIZERS[optimizer][1](ours.parameters(remove_duplicate=True))

    for step, (x_np, y_np) in enumerate(batches(rng)):
        opt_t.zero_grad()
        opt.reset_grad()
        loss_t, outputs_t = loss_fn(torch.nn, theirs, torch.tensor(x_np), torch.tensor(y_np))
        x = ndl.Tensor(x_np, device=device, dtype="float32")
        loss, outputs = loss_fn(nn, ours, x, ndl.Tensor(y_np, device=device, dtype="int64"))
        loss_t.backward()
        loss.backward()
        np.testing.assert_allclose(loss.numpy(), loss_t.item(), **TOL, err_msg=f"step {step}")
        for out, out_t in zip(outputs, outputs_t):
            np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), **TOL)
        compare_parameters(ours, theirs)
        if step < STEPS:  # the last batch checks the model after STEPS updates
            opt_t.step()
            opt.step()
