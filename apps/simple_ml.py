"""The course's apps/simple_ml.py (hw4's, which includes hw1's): MNIST parsing, the softmax loss,
a two-layer network's SGD epoch, and the CIFAR-10 and Penn Treebank training helpers, with the
course's signatures.

As the course's hw4 file, it star-imports the models (`from apps.models import *`, or
`from models import *` when only apps/ is on sys.path; importing them calls
np.random.seed(0)) and sets a global `device = ndl.cpu()`. `from simple_ml import *` provides
np, ndl and nn besides the functions.
"""

import gzip  # noqa: F401  (the course's simple_ml imports these; star-imports pass them on)
import struct  # noqa: F401
import sys  # noqa: F401
import time  # noqa: F401

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.apps.trainer import SequenceBatches as _SequenceBatches, Trainer as _Trainer
from needle.data import parse_mnist  # noqa: F401

try:
    from apps.models import *  # noqa: F403
except ModuleNotFoundError as error:  # only apps/ itself is on sys.path
    if error.name != "apps":
        raise
    from models import *  # noqa: F403

device = ndl.cpu()


def _instance(loss_fn):
    """The course passes loss modules (nn.SoftmaxLoss()); a class is instantiated."""
    return loss_fn() if isinstance(loss_fn, type) else loss_fn


# ---- hw1 ----------------------------------------------------------------------------------------
def softmax_loss(Z, y_one_hot):
    """Mean over rows of log(sum(exp(Z))) - sum(Z * y_one_hot): Z (batch, classes) logits and
    y_one_hot of the same shape, both Tensors. Returns a scalar Tensor."""
    batch = Z.shape[0]
    return (ndl.logsumexp(Z, axes=(1,)) - (Z * y_one_hot).sum(axes=(1,))).sum() / batch


def _one_hot(y, num_classes, dtype):
    one_hot = np.zeros((y.shape[0], num_classes), dtype=dtype)
    one_hot[np.arange(y.size), y] = 1
    return one_hot


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One SGD epoch of logits = ReLU(X W1) W2 over the minibatches X[i:i+batch], in order:
    X (n, input) and y (n,) NumPy, W1 and W2 Tensors. Returns the updated (W1, W2), new Tensors
    of the same dtype."""
    num_classes = W2.shape[1]
    dtype = np.dtype(str(W1.dtype))
    for start in range(0, X.shape[0], batch):
        x = ndl.Tensor(X[start : start + batch], device=W1.device, dtype=W1.dtype)
        y_one_hot = ndl.Tensor(
            _one_hot(np.asarray(y[start : start + batch]), num_classes, dtype),
            device=W1.device,
            dtype=W1.dtype,
        )
        loss = softmax_loss(ndl.relu(x @ W1) @ W2, y_one_hot)
        loss.backward()
        W1 = ndl.Tensor(
            (W1.numpy() - lr * W1.grad.numpy()).astype(dtype), device=W1.device, dtype=W1.dtype
        )
        W2 = ndl.Tensor(
            (W2.numpy() - lr * W2.grad.numpy()).astype(dtype), device=W2.device, dtype=W2.dtype
        )
    return W1, W2


def loss_err(h, y):
    """(softmax loss, error rate) of logits h (a Tensor) against integer labels y (NumPy), as
    NumPy values."""
    h = h if isinstance(h, ndl.Tensor) else ndl.Tensor(np.asarray(h), requires_grad=False)
    y = np.asarray(y)
    y_one_hot = ndl.Tensor(
        _one_hot(y, h.shape[-1], np.dtype(str(h.dtype))), device=h.device, dtype=h.dtype
    )
    return softmax_loss(h, y_one_hot).numpy(), np.mean(h.numpy().argmax(axis=1) != y)


def train_nn(X_tr, y_tr, X_te, y_te, hidden_dim=500, epochs=10, lr=0.5, batch=100):
    """hw1's illustration: after np.random.seed(0), W1 and W2 from np.random.randn scaled by
    1/sqrt(hidden_dim) and 1/sqrt(classes), nn_epoch per epoch, a table of losses and errors.
    Returns (W1, W2)."""
    n, k = X_tr.shape[1], int(y_tr.max()) + 1
    np.random.seed(0)
    W1 = ndl.Tensor(np.random.randn(n, hidden_dim).astype(np.float32) / np.sqrt(hidden_dim))
    W2 = ndl.Tensor(np.random.randn(hidden_dim, k).astype(np.float32) / np.sqrt(k))
    print("| Epoch | Train Loss | Train Err | Test Loss | Test Err |")
    for epoch in range(epochs):
        W1, W2 = nn_epoch(X_tr, y_tr, W1, W2, lr=lr, batch=batch)
        train_loss, train_err = loss_err(ndl.relu(ndl.Tensor(X_tr) @ W1) @ W2, y_tr)
        test_loss, test_err = loss_err(ndl.relu(ndl.Tensor(X_te) @ W1) @ W2, y_te)
        print(
            f"|  {epoch:>2}   |    {train_loss:.5f} |   {train_err:.5f} | "
            f"  {test_loss:.5f} |  {test_err:.5f} |"
        )
    return W1, W2


# ---- CIFAR-10 -----------------------------------------------------------------------------------
def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss(), opt=None):  # noqa: B008
    """One pass over `dataloader` after np.random.seed(4): train mode and an update per batch
    when `opt` is given, else eval mode. Returns (accuracy, mean loss) over samples."""
    np.random.seed(4)
    return _Trainer(model, _instance(loss_fn), opt).run_epoch(opt is not None, dataloader)


def train_cifar10(
    model,
    dataloader,
    n_epochs=1,
    optimizer=ndl.optim.Adam,
    lr=0.001,
    weight_decay=0.001,
    loss_fn=nn.SoftmaxLoss,
):
    """After np.random.seed(4), n_epochs training epochs with
    optimizer(model.parameters(), lr=lr, weight_decay=weight_decay) and loss_fn() (both
    classes). Returns the last epoch's (accuracy, mean loss)."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_cifar10(dataloader, model, _instance(loss_fn), opt)
    return avg_acc, avg_loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    """After np.random.seed(4), one eval epoch: (accuracy, mean loss)."""
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, _instance(loss_fn))


# ---- Penn Treebank ------------------------------------------------------------------------------
def epoch_general_ptb(
    data,
    model,
    seq_len=40,
    loss_fn=nn.SoftmaxLoss(),  # noqa: B008  (the course's default)
    opt=None,
    clip=None,
    device=None,
    dtype="float32",
):
    """One pass of truncated BPTT over `batchify`'d data (nbatch, batch) after
    np.random.seed(4): for i in range(0, nbatch - 1, seq_len), get_batch, the model on it with
    the previous hidden state detached (None at first), the loss; with `opt` (train mode, else
    eval) reset_grad, backward, clip the gradients' norm to `clip` if set, step. Returns
    (accuracy, mean loss) per target token.

    The ids go to the model as int64 Tensors on `device` (exact for any vocabulary; the
    course passes `dtype`, the model's float dtype, which the model does not need for ids)."""
    np.random.seed(4)
    batches = _SequenceBatches(data, seq_len, device=device)
    return _Trainer(model, _instance(loss_fn), opt, clip=clip).run_epoch(opt is not None, batches)


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
    """After np.random.seed(4), n_epochs epochs of epoch_general_ptb with
    optimizer(model.parameters(), lr=lr, weight_decay=weight_decay) and loss_fn() (both
    classes). Returns the last epoch's (accuracy, mean loss)."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_ptb(
            data, model, seq_len, _instance(loss_fn), opt, clip, device, dtype
        )
    return avg_acc, avg_loss


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None, dtype="float32"):
    """After np.random.seed(4), one eval epoch of epoch_general_ptb: (accuracy, mean loss)."""
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, _instance(loss_fn), None, None, device, dtype)
