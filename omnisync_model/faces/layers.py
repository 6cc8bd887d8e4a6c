"""Building blocks of the MediaPipe face networks (BlazeFace detector and face mesh), in plain PyTorch.

Both networks are stacks of the BlazeNet residual block: a 3x3 depthwise convolution (stride 1 or 2), a 1x1
pointwise convolution, a skip path (identity; 2x2 max pooling when the block halves the resolution; zero channels
appended when it widens), the sum, then ReLU (detector) or a per-channel PReLU (mesh).

TFLite "SAME" padding is asymmetric for stride 2 on even sizes (the extra row and column go at the bottom and right);
:func:`pad_same` reproduces it exactly, so stride-2 convolutions see the same pixels as in TFLite.

Shape legend
  B  batch            C  channels (Ci in, Co out)      H, W  spatial size (of the block's input)
  G  parallel branches run as channel groups
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) of one dimension (more after than before)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad [B,C,H,W] as TFLite's SAME padding does for ``kernel`` and ``stride``."""
    pads = [*same_padding(x.shape[-1], kernel, stride), *same_padding(x.shape[-2], kernel, stride)]  # W then H
    return F.pad(x, pads) if any(pads) else x


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2 (even sizes): the max of four strided views, much faster than ``max_pool2d`` on
    small NCHW maps."""
    if x.shape[-1] % 2 or x.shape[-2] % 2 or torch.jit.is_tracing():
        return F.max_pool2d(x, kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., 1::2, ::2]),
                         torch.maximum(x[..., ::2, 1::2], x[..., 1::2, 1::2]))


class PReLU(nn.Module):
    """Per-channel PReLU, max(x, 0) + alpha * min(x, 0); ``weight`` [C] is cast to the input's dtype/device."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.to(device=x.device, dtype=x.dtype))


def make_activation(kind: str, channels: int, device=None, dtype=None) -> nn.Module:
    if kind == "prelu":
        return PReLU(channels, device=device, dtype=dtype)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r} (relu or prelu)")


class SameConv(nn.Module):
    """Convolution with TFLite SAME padding (``padding="same"``) or none (``"valid"``), then an optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: str = "same",
                 activation: Optional[str] = None, groups: int = 1, device=None, dtype=None, operations=nn):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        # stride 1, odd kernel: SAME is symmetric and the convolution pads itself (no extra copy)
        self._inner_pad = kernel // 2 if (padding == "same" and stride == 1 and kernel % 2) else 0
        self.conv = operations.Conv2d(cin, cout, kernel, stride=stride, padding=self._inner_pad, groups=groups,
                                      device=device, dtype=dtype)
        self.act = make_activation(activation, cout, device, dtype) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same" and not self._inner_pad:
            x = self._traced_same(x) if torch.jit.is_tracing() else self.conv(pad_same(x, self.kernel, self.stride))
        else:
            x = self.conv(x)
        return self.act(x) if self.act is not None else x

    def _traced_same(self, x: torch.Tensor) -> torch.Tensor:
        """SAME padding without a pad op (which splits oneDNN Graph's fusion groups): where the padding after is one
        more than before, the kernel gets a leading zero row / column and both sides pad by the larger amount;
        exactly the same sums."""
        pads = [same_padding(int(size), self.kernel, self.stride) for size in x.shape[-2:]]  # (before, after) H, W
        if any(after - before not in (0, 1) for before, after in pads):
            return self.conv(pad_same(x, self.kernel, self.stride))
        (bh, ah), (bw, aw) = pads
        weight = F.pad(self.conv.weight, (aw - bw, 0, ah - bh, 0))  # [Co,Ci/g,k,k] -> [Co,Ci/g,k+dh,k+dw]
        return F.conv2d(x, weight, self.conv.bias, self.stride, (ah, aw), 1, self.conv.groups)


class BlazeBlock(nn.Module):
    """act(pointwise(depthwise(x)) + skip(x)): [B,G*Ci,H,W] -> [B,G*Co,H/stride,W/stride].

    ``groups`` G > 1 runs G independent blocks of the same shape side by side (their channels concatenated, the
    pointwise convolution grouped): one set of ops instead of G, for the mesh's parallel region branches."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, device=None, dtype=None, operations=nn,
                 groups: int = 1):
        super().__init__()
        if cout < cin or stride not in (1, 2):
            raise ValueError(f"BlazeBlock needs cout >= cin and stride 1 or 2, got {cin}->{cout} stride {stride}")
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        g = groups
        self.dw = SameConv(g * cin, g * cin, 3, stride, groups=g * cin, device=device, dtype=dtype,
                           operations=operations)
        self.pw = operations.Conv2d(g * cin, g * cout, 1, groups=g, device=device, dtype=dtype)
        self.act = make_activation(activation, g * cout, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw(self.dw(x))
        skip = max_pool2(x) if self.stride == 2 else x
        if self.cout > self.cin:
            skip = self._widen(skip)
        return self.act(h + skip)

    def _widen(self, skip: torch.Tensor) -> torch.Tensor:
        """Zero channels appended per group: [B,G*Ci,H,W] -> [B,G*Co,H,W]."""
        if torch.jit.is_tracing():  # as a 1x1 convolution by [I; 0]: oneDNN Graph fuses it with the sum (no pad op)
            eye = torch.eye(self.cout, self.cin, device=skip.device, dtype=skip.dtype)  # [Co,Ci]
            weight = eye.repeat(self.groups, 1)[:, :, None, None]  # [G*Co,Ci,1,1]
            return F.conv2d(skip, weight, groups=self.groups)
        skip = skip.unflatten(1, (self.groups, self.cin))  # [B,G*Ci,H,W] -> [B,G,Ci,H,W]
        skip = F.pad(skip, (0, 0, 0, 0, 0, self.cout - self.cin))  # [B,G,Co,H,W]
        return skip.flatten(1, 2)  # [B,G,Co,H,W] -> [B,G*Co,H,W]


def block_stack(spec: tuple[tuple[int, int, int], ...], activation: str, device=None, dtype=None,
                operations=nn, groups: int = 1) -> nn.Sequential:
    """BlazeBlocks from (cin, cout, stride) triples (per group)."""
    return nn.Sequential(*[BlazeBlock(ci, co, s, activation, device, dtype, operations, groups) for ci, co, s in spec])


def nhwc_flat(x: torch.Tensor, per_row: int) -> torch.Tensor:
    """[B,C,H,W] -> [B,H*W*C/per_row,per_row] in TFLite's NHWC order (rows ordered y, x, then channel groups)."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, per_row)  # [B,C,H,W] -> [B,H,W,C] -> [B,N,per_row]
