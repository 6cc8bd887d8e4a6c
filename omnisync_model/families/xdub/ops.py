"""``CastOps``: an ``operations`` namespace whose layers keep their weights in any stored dtype (bf16, fp8 e4m3)
and cast them to the input's dtype and device for each call (weight-only quantisation, as ComfyUI's
``comfy.ops.manual_cast`` does). Outside ComfyUI this is how fp8 X-Dub weights run: stored fp8, upcast per layer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _cast(p: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    return None if p is None else p.to(dtype=like.dtype, device=like.device)


class CastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class CastConv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class CastLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)


class CastRMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, _cast(self.weight, x), self.eps)


class CastOps:
    """The layer classes X-Dub builds, each casting its parameters to the input per call."""

    Linear = CastLinear
    Conv3d = CastConv3d
    LayerNorm = CastLayerNorm
    RMSNorm = CastRMSNorm
