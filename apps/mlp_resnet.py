"""The course's apps/mlp_resnet.py (hw2): ResidualBlock, MLPResNet, epoch and train_mnist.

As the course's file, importing this module calls np.random.seed(0), and
`from mlp_resnet import *` provides np, ndl and nn besides the functions.
"""

import os
import sys  # noqa: F401
import time  # noqa: F401

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.apps.models import MLPResNet, ResidualBlock  # noqa: F401
from needle.apps.trainer import Trainer as _Trainer

np.random.seed(0)


def epoch(dataloader, model, opt=None):
    """One pass over `dataloader`, after np.random.seed(4): model.train() and an update per
    batch when `opt` is given, else model.eval(). SoftmaxLoss on the images flattened to
    (batch, 784). Returns (error rate, mean loss), both over samples."""
    np.random.seed(4)
    trainer = _Trainer(model, nn.SoftmaxLoss(), opt, flatten=True)
    accuracy, loss = trainer.run_epoch(opt is not None, dataloader)
    return 1.0 - accuracy, loss


def train_mnist(
    batch_size=100,
    epochs=10,
    optimizer=ndl.optim.Adam,
    lr=0.001,
    weight_decay=0.001,
    hidden_dim=100,
    data_dir="data",
):
    """After np.random.seed(4), train MLPResNet(784, hidden_dim) on the MNIST training files in
    `data_dir` (shuffled batches) and evaluate it on the t10k files. Returns the last epoch's
    (train error, train loss, test error, test loss)."""
    np.random.seed(4)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_set = ndl.data.MNISTDataset(
        os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "train-labels-idx1-ubyte.gz"),
    )
    test_set = ndl.data.MNISTDataset(
        os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"),
    )
    train_loader = ndl.data.DataLoader(train_set, batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(test_set, batch_size)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss
