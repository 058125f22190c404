"""The course's apps/simple_ml.py: MNIST parsing, softmax loss, a two-layer network epoch, and
the CIFAR-10 and Penn Treebank training helpers, with the course's signatures."""

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.apps.trainer import SequenceBatches, Trainer
from needle.data import parse_mnist  # noqa: F401


def softmax_loss(Z, y_one_hot):
    """Mean softmax cross-entropy of logits Z (batch, classes) against one-hot labels."""
    batch = Z.shape[0]
    return (ndl.logsumexp(Z, axes=(1,)) - (Z * y_one_hot).sum(axes=(1,))).sum() / batch


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One SGD epoch of logits = ReLU(X W1) W2 over minibatches; returns the updated (W1, W2)."""
    num_classes = W2.shape[1]
    for start in range(0, X.shape[0], batch):
        x = ndl.Tensor(X[start : start + batch], device=W1.device, requires_grad=False)
        labels = y[start : start + batch]
        y_one_hot = ndl.init.one_hot(num_classes, labels, device=W1.device)
        loss = softmax_loss(ndl.relu(x @ W1) @ W2, y_one_hot)
        loss.backward()
        W1 = ndl.Tensor(W1.numpy() - lr * W1.grad.numpy(), device=W1.device)
        W2 = ndl.Tensor(W2.numpy() - lr * W2.grad.numpy(), device=W2.device)
    return W1, W2


def loss_err(h, y):
    """(mean softmax loss, error rate) of logits h (numpy or Tensor) for integer labels y."""
    h = h.numpy() if isinstance(h, ndl.Tensor) else np.asarray(h)
    y_one_hot = np.zeros((y.shape[0], h.shape[-1]))
    y_one_hot[np.arange(y.size), y] = 1
    shifted = h - h.max(axis=1, keepdims=True)
    loss = (np.log(np.exp(shifted).sum(axis=1)) - (shifted * y_one_hot).sum(axis=1)).mean()
    return loss, np.mean(h.argmax(axis=1) != y)


# ---- CIFAR-10 -----------------------------------------------------------------------------------
def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss, opt=None):
    """One pass over `dataloader`; trains when `opt` is given. Returns (accuracy, mean loss)."""
    np.random.seed(4)
    return Trainer(model, loss_fn(), opt).run_epoch(opt is not None, dataloader)


def train_cifar10(
    model,
    dataloader,
    n_epochs=1,
    optimizer=ndl.optim.Adam,
    lr=0.001,
    weight_decay=0.001,
    loss_fn=nn.SoftmaxLoss,
):
    """Train for n_epochs; returns (accuracy, loss) of the last epoch."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_cifar10(dataloader, model, loss_fn, opt)
    return avg_acc, avg_loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    """(accuracy, mean loss) on `dataloader` in eval mode."""
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn)


# ---- Penn Treebank ------------------------------------------------------------------------------
def epoch_general_ptb(
    data,
    model,
    seq_len=40,
    loss_fn=nn.SoftmaxLoss,
    opt=None,
    clip=None,
    device=None,
    dtype="float32",
):
    """One pass of truncated BPTT over batchify'd `data`; returns (accuracy, mean loss)."""
    np.random.seed(4)
    return Trainer(model, loss_fn(), opt, clip=clip).run_epoch(
        opt is not None, SequenceBatches(data, seq_len, device=device, dtype=dtype)
    )


def train_ptb(
    model,
    data,
    seq_len=40,
    n_epochs=1,
    optimizer=ndl.optim.SGD,
    lr=4.0,
    weight_decay=0.0,
    loss_fn=nn.SoftmaxLoss,
    clip=None,
    device=None,
    dtype="float32",
):
    """Train for n_epochs; returns (accuracy, loss) of the last epoch."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_ptb(
            data, model, seq_len, loss_fn, opt, clip, device, dtype
        )
    return avg_acc, avg_loss


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None, dtype="float32"):
    """(accuracy, mean loss) on batchify'd `data` in eval mode."""
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, loss_fn, None, None, device, dtype)
