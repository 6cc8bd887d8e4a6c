"""The latents X-Dub works in: Wan2.2 VAE means (mu, never a sample), normalised per channel.

Facts (X-Dub's ``diffsynth/models/wan_video_vae.py``, ``WanVideoVAE38``): 48 latent channels, 16x spatial and 4x
temporal compression (causal: F = 1 + 4k frames -> 1 + k latents), frames in -1..1, the encoder's mean normalised as
``(mu - mean) * (1 / std)`` and de-normalised as ``z / (1 / std) + mean`` with the 48 per-channel statistics below.
ComfyUI's ``comfy/latent_formats.py`` ``Wan22`` holds the same 48 means and stds (checked equal value by value).

A raw codec (ComfyUI's VAE through ``VAECodec``, the diffusers ``AutoencoderKLWan`` wrapper) gives un-normalised
latents; :class:`XDubLatentCodec` wraps it so that the model sees exactly the reference's latents.

Shape legend
  F video frames   H, W frame size   C latent channels (48)   T latent frames   h, w latent size
"""

from __future__ import annotations

import torch

from ...core.codec import Codec

__all__ = ["WAN22_LATENT_MEAN", "WAN22_LATENT_STD", "WAN22_CHANNELS", "WAN22_SPATIAL", "WAN22_TEMPORAL",
           "XDubLatentCodec", "check_wan22_codec"]

WAN22_CHANNELS, WAN22_SPATIAL, WAN22_TEMPORAL = 48, 16, 4
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


def check_wan22_codec(codec: Codec, channels: int = WAN22_CHANNELS, what: str = "the VAE") -> None:
    """ValueError naming ``what`` unless the codec has the Wan2.2 VAE's contract (channels, 16x, 4x)."""
    got = (int(codec.latent_channels), int(codec.spatial_factor), int(codec.temporal_factor))
    if got != (channels, WAN22_SPATIAL, WAN22_TEMPORAL):
        hint = " (that is a Wan 2.1 VAE)" if got[0] == 16 else ""
        raise ValueError(f"{what} makes {got[0]}-channel latents at {got[1]}x spatial / {got[2]}x temporal "
                         f"compression{hint}; X-Dub needs the Wan2.2 VAE ({channels} channels, "
                         f"{WAN22_SPATIAL}x, {WAN22_TEMPORAL}x): Wan2.2_VAE.safetensors")


class XDubLatentCodec:
    """A raw Wan2.2-VAE codec whose latents are normalised per channel as X-Dub's VAE wrapper does."""

    def __init__(self, raw: Codec):
        if int(raw.latent_channels) != WAN22_CHANNELS:
            raise ValueError(f"the Wan2.2 latent statistics have {WAN22_CHANNELS} channels; the VAE makes "
                             f"{raw.latent_channels}")
        self.raw = raw
        self.spatial_factor = int(raw.spatial_factor)
        self.temporal_factor = int(raw.temporal_factor)
        self.latent_channels = WAN22_CHANNELS

    def __repr__(self) -> str:
        return f"XDubLatentCodec({self.raw!r})"

    @staticmethod
    def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) as [1, C, 1, 1, 1] in the latent's dtype and device (the reference's ``scale``)."""
        mean = torch.tensor(WAN22_LATENT_MEAN).view(1, -1, 1, 1, 1)  # [C] -> [1,C,1,1,1]
        inv_std = 1.0 / torch.tensor(WAN22_LATENT_STD).view(1, -1, 1, 1, 1)  # computed in fp32, as the reference
        return mean.to(like), inv_std.to(like)

    def normalise(self, mu: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [F,H,W,3] 0..1 -> normalised latent [1,48,T,h,w]."""
        return self.normalise(self.raw.encode(frames))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """normalised latent [1,48,T,h,w] -> frames [F,H,W,3] 0..1."""
        return self.raw.decode(self.denormalise(latent))
