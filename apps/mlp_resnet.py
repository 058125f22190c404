"""The course's apps/mlp_resnet.py: ResidualBlock, MLPResNet, epoch and train_mnist."""

import os

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.apps.models import MLPResNet, ResidualBlock  # noqa: F401
from needle.apps.trainer import Trainer


def epoch(dataloader, model, opt=None):
    """One pass: trains when `opt` is given. Returns (error rate, mean loss), as the course."""
    np.random.seed(4)
    trainer = Trainer(model, nn.SoftmaxLoss(), opt, flatten=True)
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
    """Train an MLPResNet on MNIST files in `data_dir`; returns
    (train error, train loss, test error, test loss) of the last epoch."""
    np.random.seed(4)
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
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss
