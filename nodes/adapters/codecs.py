"""VAE: a ComfyUI VAE behind the pipeline's Codec protocol, checked against the model's backend.

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ...omnisync_model.core.codec import Codec
from ...omnisync_model.sampling.backend import Backend


class VAECodec:
    """A ComfyUI VAE behind the :class:`Codec` protocol (duck-typed: encode, decode, latent_channels, ...).

    Video VAEs (``latent_dim == 3``, e.g. Wan 2.1: 8x spatial, 4x temporal, 16 channels) encode frames
    [F,H,W,3] to [1,C,T,h,w] and decode to [1,T',H,W,3]. Image VAEs encode each frame ([F,C,h,w]) and have a
    temporal factor of 1. The factors come from the VAE: ``spacial_compression_encode()`` and
    ``temporal_compression_decode()`` (None for image VAEs). Latents are the VAE's raw output, as core VAEEncode
    gives them.
    """

    def __init__(self, vae: Any, after_use: Optional[Callable[[], None]] = None):
        for attr in ("encode", "decode", "latent_channels"):
            if not hasattr(vae, attr):
                raise ValueError(f"the connected VAE has no '{attr}'; connect a VAE from a core VAE loader "
                                 f"or OmniSyncPixelVAE")
        self.vae = vae
        self.video = getattr(vae, "latent_dim", 2) == 3
        self.spatial_factor = int(_call_or(vae, "spacial_compression_encode", 8))
        self.temporal_factor = int(_call_or(vae, "temporal_compression_decode", None) or 1) if self.video else 1
        self.latent_channels = int(vae.latent_channels)
        self.after_use = after_use  # e.g. re-load the DiT if loading the VAE pushed it off the GPU

    def __repr__(self) -> str:
        return (f"VAECodec({type(self.vae).__name__}, spatial={self.spatial_factor}, "
                f"temporal={self.temporal_factor}, channels={self.latent_channels})")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [F,H,W,3] 0..1 -> latent [1,C,T,h,w]."""
        out = self.vae.encode(frames)
        self._used()
        if out.dim() == 4:
            return out.permute(1, 0, 2, 3).unsqueeze(0)  # image VAE [F,C,h,w] -> [1,C,F,h,w]
        return out  # video VAE [1,C,T,h,w]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [1,C,T,h,w] -> frames [T',H,W,3] clamped to 0..1."""
        if self.video:
            images = self.vae.decode(latent)  # [1,T',H,W,3]
        else:
            images = self.vae.decode(latent[0].permute(1, 0, 2, 3))  # [1,C,T,h,w] -> [T,C,h,w] -> [T,H,W,3]
        self._used()
        return images.reshape(-1, *images.shape[-3:]).float().clamp(0, 1)  # [1,T',H,W,3] -> [T',H,W,3]

    def _used(self) -> None:
        if self.after_use is not None:
            self.after_use()


def _call_or(obj: Any, name: str, default: Any) -> Any:
    fn = getattr(obj, name, None)
    return fn() if callable(fn) else default


def codec_for(backend: Backend, vae: Any = None, after_vae: Optional[Callable[[], None]] = None) -> Codec:
    """The backend's built-in codec without a VAE, else the VAE wrapped; the backend refuses a VAE that does not fit.

    ``after_vae`` runs after every VAE encode / decode (the nodes re-load the model there: loading the VAE may have
    moved it off the GPU).
    """
    return backend.prepare_codec(VAECodec(vae, after_vae) if vae is not None else None)
