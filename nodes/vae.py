"""OmniSyncPixelVAE: the pack's pixel codec as a ComfyUI VAE, so core VAEEncode / VAEDecode work with it.

Core ``VAEEncode`` calls ``vae.encode(IMAGE)`` and ``VAEDecode`` calls ``vae.decode(samples)``; both are
``comfy.sd.VAE`` methods that load ``vae.patcher`` through the memory manager and call
``first_stage_model.encode/decode`` on [B,3,T,H,W] pixels in -1..1. We therefore build a real ``comfy.sd.VAE``
(through its weight-free "pixel_space" path, as VAELoader does) and swap in a space-to-depth first stage with
video-VAE settings (latent_dim 3, f x f spatial, no temporal compression). The latents equal
``PixelCodec(f).encode`` bit for bit, so this VAE and OmniSyncLipSync without a VAE give identical results.

Shape legend: F frames, H, W frame size, f factor, C = 3 f^2 latent channels, h, w = H/f, W/f.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd

from .types import CATEGORY


class SpaceToDepth(torch.nn.Module):
    """First stage of the pixel VAE: [1,3,F,H,W] in -1..1 <-> [1,3ff,F,h,w] (pixel_unshuffle channel order)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = int(factor)
        self.register_buffer("pixel_space_vae", torch.tensor(1.0))  # weight-free; a tensor for device bookkeeping

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        frames = x[0].permute(1, 0, 2, 3)  # [1,3,F,H,W] -> [F,3,H,W]
        z = F.pixel_unshuffle(frames, self.factor)  # -> [F,3ff,h,w]
        return z.permute(1, 0, 2, 3).unsqueeze(0)  # -> [1,3ff,F,h,w]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lat = z[0].permute(1, 0, 2, 3)  # [1,C,T,h,w] -> [T,C,h,w]
        x = F.pixel_shuffle(lat, self.factor)  # -> [T,3,H,W]
        return x.permute(1, 0, 2, 3).unsqueeze(0)  # -> [1,3,T,H,W]


def _identity(frames: int) -> int:
    return frames


def _bytes_per_pixel(shape, dtype) -> int:
    return 64 * shape[2] * shape[3] * (shape[4] if len(shape) > 4 else 1) * mm.dtype_size(dtype)


class PixelVAE(comfy.sd.VAE):
    """A ``comfy.sd.VAE`` implementing OmniSync's pixel codec (``pixel<f>``)."""

    def __init__(self, factor: int = 4):
        super().__init__(sd={"pixel_space_vae": torch.tensor(1.0)})  # weight-free VAE; sets devices and defaults
        f = int(factor)
        self.factor = f
        self.first_stage_model = SpaceToDepth(f).eval()
        self.latent_dim = 3  # a video VAE: IMAGE [F,H,W,3] becomes [1,3,F,H,W]
        self.latent_channels = 3 * f * f
        self.output_channels = 3
        self.downscale_ratio = (_identity, f, f)
        self.upscale_ratio = (_identity, f, f)
        self.downscale_index_formula = (1, f, f)
        self.upscale_index_formula = (1, f, f)
        self.working_dtypes = [torch.float32]
        self.vae_dtype = torch.float32  # exact round trip
        self.memory_used_encode = _bytes_per_pixel
        self.memory_used_decode = _bytes_per_pixel
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=mm.vae_offload_device())


class OmniSyncPixelVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncPixelVAE",
            display_name="OmniSync Pixel VAE",
            category=CATEGORY,
            description="The weight-free pixel codec of the OmniSync demo models as a VAE: core VAEEncode turns "
                        "frames into [1, 3*f*f, frames, H/f, W/f] latents and VAEDecode inverts it exactly. Frame "
                        "sizes must be multiples of the factor (core VAEEncode centre-crops otherwise).",
            inputs=[
                io.Int.Input("factor", default=4, min=1, max=16,
                             tooltip="Space-to-depth factor; must match the checkpoint's codec "
                                     "(pixel4 -> 4, the shipped demo model)."),
            ],
            outputs=[io.Vae.Output("vae", display_name="vae")],
        )

    @classmethod
    def execute(cls, factor: int = 4) -> io.NodeOutput:
        return io.NodeOutput(PixelVAE(factor))
