"""Example models: MLP-ResNet (MNIST), ResNet-9 (CIFAR-10) and RNN/LSTM/Transformer language
models (Penn Treebank), as in the needle course. `apps/` re-exports them in the course layout."""

from typing import Optional

from needle import nn

__all__ = ["ResidualBlock", "MLPResNet", "ConvBN", "ResNet9", "LanguageModel"]


def ResidualBlock(
    dim, hidden_dim, norm=nn.BatchNorm1d, drop_prob=0.1, device=None, dtype="float32"
):
    """Sequential(Residual(Sequential(Linear(dim, hidden_dim), norm(hidden_dim), ReLU(),
    Dropout(drop_prob), Linear(hidden_dim, dim), norm(dim))), ReLU()), built in that order.
    `norm` is called with the dimension alone unless a device or dtype is given (the course
    passes norm layers and functions of one argument)."""
    kw = {} if device is None and dtype == "float32" else dict(device=device, dtype=dtype)
    return nn.Sequential(
        nn.Residual(
            nn.Sequential(
                nn.Linear(dim, hidden_dim, device=device, dtype=dtype),
                norm(hidden_dim, **kw),
                nn.ReLU(),
                nn.Dropout(drop_prob),
                nn.Linear(hidden_dim, dim, device=device, dtype=dtype),
                norm(dim, **kw),
            )
        ),
        nn.ReLU(),
    )


def MLPResNet(
    dim,
    hidden_dim=100,
    num_blocks=3,
    num_classes=10,
    norm=nn.BatchNorm1d,
    drop_prob=0.1,
    device=None,
    dtype="float32",
):
    """(batch, dim) -> (batch, num_classes): Sequential(Linear(dim, hidden_dim), ReLU(),
    num_blocks x ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob),
    Linear(hidden_dim, num_classes)), its parameters drawn in that order."""
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, device=device, dtype=dtype),
        nn.ReLU(),
        *[
            ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob, device=device, dtype=dtype)
            for _ in range(num_blocks)
        ],
        nn.Linear(hidden_dim, num_classes, device=device, dtype=dtype),
    )


class ConvBN(nn.Module):
    """Conv (same padding) -> BatchNorm2d -> ReLU, NCHW."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, device=None, dtype="float32"
    ):
        super().__init__()
        self.conv = nn.Conv(
            in_channels, out_channels, kernel_size, stride=stride, device=device, dtype=dtype
        )
        self.bn = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ResNet9(nn.Module):
    """(batch, 3, 32, 32) -> (batch, 10), the course's ResNet-9 for CIFAR-10."""

    def __init__(self, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw), ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x):
        return self.model(x)


class LanguageModel(nn.Module):
    """Embedding -> RNN, LSTM or Transformer -> Linear over the vocabulary.

    forward(x (seq_len, batch) of word indices, h) -> (logits (seq_len * batch, output_size), h).
    """

    def __init__(
        self,
        embedding_size,
        output_size,
        hidden_size,
        num_layers=1,
        seq_model="rnn",
        seq_len=40,
        device=None,
        dtype="float32",
    ):
        super().__init__()
        self.embedding = nn.Embedding(output_size, embedding_size, device=device, dtype=dtype)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(
                embedding_size, hidden_size, num_layers, device=device, dtype=dtype
            )
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(
                embedding_size, hidden_size, num_layers, device=device, dtype=dtype
            )
        elif seq_model == "transformer":
            self.seq_model = nn.Transformer(
                embedding_size,
                hidden_size,
                num_layers,
                sequence_len=seq_len,
                device=device,
                dtype=dtype,
            )
            hidden_size = embedding_size  # the transformer keeps the embedding width
        else:
            raise ValueError(f"seq_model must be 'rnn', 'lstm' or 'transformer', got {seq_model!r}")
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size, output_size, device=device, dtype=dtype)

    def forward(self, x, h: Optional[object] = None):
        seq_len, batch = x.shape
        out, h = self.seq_model(self.embedding(x), h)
        return self.linear(out.reshape((seq_len * batch, self.hidden_size))), h
