"""Convolutional layers of needle.nn."""

from __future__ import annotations

import math

import needle.init as init
from needle import ops
from needle.autograd import Tensor

from .nn_basic import Module, Parameter

__all__ = ["Conv"]


class Conv(Module):
    """2-D convolution with "same" padding (kernel_size // 2), square kernels.

    (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)) for odd kernels.
    The module speaks NCHW, like torch and the course; ``ops.conv`` with layout "NCHW" works
    on NHWC views of them, with (k, k, C_in, C_out) weights, and adds the bias itself.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride: int = 1,
        bias: bool = True,
        device=None,
        dtype="float32",
    ):
        super().__init__()
        if isinstance(kernel_size, tuple):
            kernel_size = kernel_size[0]
        if isinstance(stride, tuple):
            stride = stride[0]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        k = kernel_size
        self.weight = Parameter(
            init.kaiming_uniform(
                in_channels * k * k,
                out_channels * k * k,
                shape=(k, k, in_channels, out_channels),
                device=device,
                dtype=dtype,
            )
        )
        if bias:
            bound = 1.0 / math.sqrt(in_channels * k * k)
            self.bias = Parameter(
                init.rand(out_channels, low=-bound, high=bound, device=device, dtype=dtype)
            )
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        # One op: the NCHW layout and the bias are handled inside it (views of NHWC arrays).
        padding = self.kernel_size // 2
        return ops.conv(x, self.weight, self.stride, padding, bias=self.bias, layout="NCHW")
