"""A local Stable Diffusion VAE (diffusers ``AutoencoderKL``, e.g. stabilityai/sd-vae-ft-mse for LatentSync) behind
the pipeline's Codec protocol, for the command line (ComfyUI users load it with core VAELoader instead).

diffusers is an optional dependency, imported on first use. Only local files are read, never downloaded:

* a diffusers VAE folder: ``config.json`` (``_class_name`` AutoencoderKL) + ``diffusion_pytorch_model.safetensors``
  (a folder holding a ``vae`` sub-folder is accepted too);
* a single ``.safetensors`` file with diffusers key names, or with the original LDM names
  (``vae-ft-mse-840000-ema-pruned.safetensors``: ``encoder.down.0.block.0...``, converted on load by diffusers'
  own ``convert_ldm_vae_checkpoint``); the config is rebuilt from the tensor shapes (GroupNorm 32, as every SD VAE).

Before anything is built, a VAE of another family is refused naming what it is: latents with other than 4
channels (Flux / SD3: 16), a 3D video VAE (Wan, Hunyuan: ``_class_name`` or key layout), a folder without config.

Latents are the encoder's mean, unscaled (the backend applies 0.18215); frames go in as 0..1 and come back clamped.

Shape legend
  F video frames   H, W frame size   C latent channels (4)   h, w latent size (H/8, W/8)   n frames per VAE call
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..core.checkpoint import CheckpointError, PathLike, read_header, read_tensors
from ..core.optional import install_hint, require

logger = logging.getLogger(__name__)

__all__ = ["SDVAECodec", "load_sd_vae", "check_sd_vae_path", "infer_sd_vae_config", "INSTALL_HINT", "SD_CHANNELS"]

INSTALL_HINT = install_hint("diffusers")
WEIGHTS = "diffusion_pytorch_model.safetensors"
SD_CHANNELS = 4
FRAMES_PER_CALL = 16
_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
_LDM_DOWN = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_VIDEO_MARKERS = ("encoder.downsamples.", "encoder.down_blocks.0.resnets.0.conv1.weight_3d",
                  "decoder.upsamples.", "encoder.conv_in.conv.weight")


def _require_diffusers():
    return require("diffusers", "the SD VAE on the command line")

def _family_error(source: Any, what: str) -> CheckpointError:
    return CheckpointError(f"{source} is {what}; LatentSync needs the Stable Diffusion VAE (sd-vae-ft-mse: "
                           f"AutoencoderKL, 4 latent channels, 8x), not a VAE of another family")


def infer_sd_vae_config(shapes: Mapping[str, tuple], source: Any = "VAE") -> dict:
    """AutoencoderKL's config from diffusers-named tensor shapes (SD layout: DownEncoderBlock2D / UpDecoderBlock2D,
    GroupNorm 32); CheckpointError when they are not an SD-style KL VAE with 4 latent channels."""
    if any(k.startswith(_VIDEO_MARKERS) or k in _VIDEO_MARKERS for k in shapes):
        raise _family_error(source, "a video VAE (Wan / Hunyuan key layout)")
    levels = sorted({int(m.group(1)) for k in shapes if (m := _DOWN.match(k))})
    if not levels or "encoder.conv_out.weight" not in shapes or "decoder.conv_in.weight" not in shapes:
        raise _family_error(source, "not an AutoencoderKL (no encoder.down_blocks / conv_out / decoder.conv_in)")
    latent = int(shapes["decoder.conv_in.weight"][1])
    if latent != SD_CHANNELS or len(shapes["encoder.conv_out.weight"]) != 4:
        raise _family_error(source, f"a VAE with {latent}-channel latents")
    channels = [int(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0]) for i in levels]
    layers = len({m.group(2) for k in shapes if (m := _DOWN.match(k)) and m.group(1) == "0"})
    return _sd_config(int(shapes["encoder.conv_in.weight"][1]), int(shapes["decoder.conv_out.weight"][0]), channels,
                      layers, use_quant_conv="quant_conv.weight" in shapes,
                      use_post_quant_conv="post_quant_conv.weight" in shapes)


def _sd_config(cin: int, cout: int, channels: list[int], layers: int, **extra: Any) -> dict:
    """AutoencoderKL's arguments for an SD-layout VAE (GroupNorm 32, as every released SD VAE)."""
    return dict(in_channels=cin, out_channels=cout, down_block_types=["DownEncoderBlock2D"] * len(channels),
                up_block_types=["UpDecoderBlock2D"] * len(channels), block_out_channels=channels,
                layers_per_block=layers, latent_channels=SD_CHANNELS, norm_num_groups=32, **extra)


def _folder(path: Path) -> tuple[dict, Path]:
    config_file, weights = path / "config.json", path / WEIGHTS
    if not config_file.is_file():
        if (path / "vae" / "config.json").is_file():
            return _folder(path / "vae")
        raise FileNotFoundError(f"VAE config not found: {config_file} (pass the diffusers folder of "
                                f"stabilityai/sd-vae-ft-mse, or its .safetensors file)")
    if not weights.is_file():
        pickle = path / "diffusion_pytorch_model.bin"
        hint = f" ({pickle.name} is a pickle: download the .safetensors file)" if pickle.is_file() else ""
        raise FileNotFoundError(f"VAE weights not found: {weights} (safetensors only){hint}")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not a readable JSON config: {exc}") from exc
    if data.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise _family_error(config_file, f"a {data.get('_class_name')} config")
    if int(data.get("latent_channels", SD_CHANNELS)) != SD_CHANNELS:
        raise _family_error(config_file, f"a VAE with {data.get('latent_channels')}-channel latents")
    return {k: v for k, v in data.items() if not k.startswith("_")}, weights


def _ldm_layout(shapes: Mapping[str, tuple]) -> bool:
    return any(_LDM_DOWN.match(k.split("first_stage_model.")[-1]) for k in shapes)


def _single_file(path: Path) -> tuple[dict, dict[str, tuple], bool]:
    """(config, shapes under diffusers names, is LDM layout) of a single VAE file, from its header."""
    shapes = {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}
    if _ldm_layout(shapes):
        if any(k.startswith(_VIDEO_MARKERS) for k in shapes):
            raise _family_error(path, "a video VAE (Wan / Hunyuan key layout)")
        ldm = {k.split("first_stage_model.")[-1]: v for k, v in shapes.items()}
        z = ldm.get("decoder.conv_in.weight", (0, 0))[1]
        if z != SD_CHANNELS:
            raise _family_error(path, f"a VAE with {z}-channel latents")
        levels = sorted({int(m.group(1)) for k in ldm if (m := _LDM_DOWN.match(k))})
        channels = [int(ldm[f"encoder.down.{i}.block.0.conv1.weight"][0]) for i in levels]
        layers = len({m.group(2) for k in ldm if (m := _LDM_DOWN.match(k)) and m.group(1) == "0"})
        config = _sd_config(int(ldm["encoder.conv_in.weight"][1]), int(ldm["decoder.conv_out.weight"][0]), channels,
                            layers)
        return config, shapes, True
    return infer_sd_vae_config(shapes, path), shapes, False


def check_sd_vae_path(path: PathLike) -> dict:
    """The VAE's config from its files alone (nothing built, diffusers not needed); CheckpointError naming the file
    when it is not an SD-style 4-channel KL VAE."""
    path = Path(path)
    if path.is_dir():
        config, weights = _folder(path)
        shapes = {k: tuple(v["shape"]) for k, v in read_header(weights).items() if k != "__metadata__"}
        infer_sd_vae_config(shapes, weights)  # the weights too must be an SD VAE, whatever the config says
        return config
    if not path.is_file():
        raise FileNotFoundError(f"VAE not found: {path}")
    return _single_file(path)[0]


class SDVAECodec:
    """frames [F,H,W,3] 0..1 <-> raw latent [1,4,F,h,w] through ``AutoencoderKL`` (the encoder's mean), one latent
    per frame (temporal factor 1), ``FRAMES_PER_CALL`` frames per VAE call."""

    temporal_factor = 1

    def __init__(self, vae: Any):
        self.vae = vae
        self.latent_channels = int(vae.config.latent_channels)
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def __repr__(self) -> str:
        return f"SDVAECodec(channels={self.latent_channels}, spatial={self.spatial_factor})"

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F, H, W, 3], got {list(frames.shape)}")
        p, f = self._param, self.spatial_factor
        if frames.shape[1] % f or frames.shape[2] % f:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} is not divisible by the VAE factor {f}")
        parts = []
        for chunk in frames.split(FRAMES_PER_CALL):
            x = chunk.to(device=p.device, dtype=p.dtype).permute(0, 3, 1, 2) * 2 - 1  # [n,H,W,3] -> [n,3,H,W]
            parts.append(self.vae.encode(x).latent_dist.mode().float())  # [n,4,h,w]
        return torch.cat(parts).permute(1, 0, 2, 3)[None]  # [F,4,h,w] -> [1,4,F,h,w]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 5 or latent.shape[0] != 1 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be [1, {self.latent_channels}, T, h, w], got {list(latent.shape)}")
        p = self._param
        frames = latent[0].permute(1, 0, 2, 3)  # [1,4,T,h,w] -> [T,4,h,w]
        parts = []
        for chunk in frames.split(FRAMES_PER_CALL):
            image = self.vae.decode(chunk.to(device=p.device, dtype=p.dtype)).sample  # [n,3,H,W] in -1..1
            parts.append(((image.permute(0, 2, 3, 1).float() + 1) / 2).clamp(0, 1))  # -> [n,H,W,3]
        return torch.cat(parts)


def _tensors(path: Path, ldm: bool, config: dict) -> dict[str, torch.Tensor]:
    tensors = read_tensors(path)
    if not ldm:
        return tensors
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(tensors, config)


def load_sd_vae(path: PathLike, device: Union[str, torch.device] = "cpu",
                dtype: Optional[torch.dtype] = torch.float32) -> SDVAECodec:
    """An :class:`SDVAECodec` from a local diffusers folder or single safetensors file (strict keys, no download)."""
    path = Path(path)
    if path.is_dir():
        config, weights = _folder(path)
        check_sd_vae_path(path)
        ldm = False
    elif path.is_file():
        config, _, ldm = _single_file(path)
        weights = path
    else:
        raise FileNotFoundError(f"VAE not found: {path}")
    diffusers = _require_diffusers()
    known = set(inspect.signature(diffusers.AutoencoderKL.__init__).parameters) - {"self"}
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(**{k: v for k, v in config.items() if k in known})
    tensors = _tensors(weights, ldm, config)
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad:
        raise CheckpointError(f"{weights} does not match the AutoencoderKL of its config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, mis-shaped {bad[:8]}")
    vae.load_state_dict(tensors, strict=True, assign=True)
    if dtype is not None and dtype != next(vae.parameters()).dtype:
        vae = vae.to(dtype=dtype)
    vae = vae.to(device=device).eval().requires_grad_(False)
    codec = SDVAECodec(vae)
    logger.info("VAE %s: AutoencoderKL, %d channels, %dx", path, codec.latent_channels, codec.spatial_factor)
    return codec
