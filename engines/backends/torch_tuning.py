"""Load-time choices of the torch backend that trade nothing in accuracy for a faster first frame.

``fp16_depthwise``: PyTorch sends fp16 depthwise convolutions to cuDNN (fp32 ones go to its own
native kernel, ``_conv_depthwise2d``); a fresh process then spends its first fp16 frame finding a
cuDNN plan for each depthwise shape.  ``native`` (the default) routes fp16 depthwise convolutions
to the native kernel, as fp32 already is.  Measured on the H200 (docs/benchmarks/h200-latency/):
efficientnet_lite0's first fp16 forward at batch 8 took 2.92 s with cuDNN and 0.30 s native (the
second 8.3 and 4.3 ms), and ``streamer run`` in a fresh process labelled its first frame after
8.14 s instead of 5.00 s (fp16, eager, batch 1).  ``STREAMER_TORCH_DEPTHWISE=cudnn`` gives cuDNN
back (a measurement switch, see tools/cold_start.py; an unknown value is an error).
"""

from __future__ import annotations

import math
import os
import types
from typing import TYPE_CHECKING, Literal

from engines.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

DepthwiseChoice = Literal["cudnn", "native"]
DEPTHWISE_ENV = "STREAMER_TORCH_DEPTHWISE"
DEFAULT_DEPTHWISE: DepthwiseChoice = "native"


def fp16_depthwise_choice() -> DepthwiseChoice:
    value = os.environ.get(DEPTHWISE_ENV, DEFAULT_DEPTHWISE).strip().lower()
    if value not in ("cudnn", "native"):
        raise ConfigError(f"{DEPTHWISE_ENV} must be cudnn or native, got {value!r}")
    return value  # type: ignore[return-value]


def is_depthwise(conv: "nn.Module") -> bool:
    from torch import nn

    return (
        isinstance(conv, nn.Conv2d)
        and conv.groups > 1
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _native_forward(self: "nn.Conv2d", x: "torch.Tensor") -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    from engines.efficientnet_lite import SameConv2d

    padding = tuple(self.padding)
    if isinstance(self, SameConv2d):  # TensorFlow SAME padding, as SameConv2d.forward computes it
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        padding = (0, 0)
    out: torch.Tensor = torch._C._nn._conv_depthwise2d(  # type: ignore[attr-defined]
        x, self.weight, self.kernel_size, self.bias, self.stride, padding, self.dilation
    )
    return out


def use_native_depthwise(module: "nn.Module") -> int:
    """Route every depthwise convolution of ``module`` to PyTorch's native CUDA kernel; returns how many."""
    count = 0
    for sub in module.modules():
        if is_depthwise(sub):
            sub.forward = types.MethodType(_native_forward, sub)
            count += 1
    return count
