"""A local diffusers ``AutoencoderKLWan`` (the Wan2.2 VAE for X-Dub) behind the pipeline's Codec protocol.

diffusers is an optional dependency (imported on first use). Only local files are read: a diffusers VAE folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``, e.g. the ``vae`` folder of Wan2.2-TI2V-5B-Diffusers), a
single safetensors file with diffusers key names (built with the Wan2.2 VAE config), or the original-layout
``Wan2.2_VAE.safetensors`` of X-Dub's download (Wan's own names ``encoder.downsamples.i.downsamples.j...``), whose
keys :func:`wan22_to_diffusers_keys` renames and whose config :func:`wan22_config_from_shapes` reads from the shapes
(diffusers' own single-file converter only knows the Wan 2.1 layout).

Latents are the encoder's mean (the reference never samples), un-normalised; X-Dub's backend normalises them.

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..core.checkpoint import CheckpointError, PathLike, read_header, read_tensors
from ..core.optional import install_hint, require

logger = logging.getLogger(__name__)

__all__ = ["DiffusersVAECodec", "load_diffusers_vae", "check_vae_path", "WAN22_VAE_CONFIG", "INSTALL_HINT",
           "wan22_to_diffusers_keys", "wan22_config_from_shapes"]

INSTALL_HINT = install_hint("diffusers")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# the Wan2.2-TI2V-5B-Diffusers vae/config.json values (48 channels, patch 2, residual blocks, 16x / 4x)
WAN22_VAE_CONFIG = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
                        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                        scale_factor_temporal=4)
ORIGINAL_KEY = "encoder.downsamples.0.residual.0.gamma"  # Wan 2.1's own layout
WAN22_KEY = "encoder.downsamples.0.downsamples.0.residual.0.gamma"  # Wan2.2's own layout (residual down blocks)
_STAGE = re.compile(r"^(encoder|decoder)\.(down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.+)$")
_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
             "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
             "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
_TOP = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
        "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
_PART = {"conv1": "conv_in", "head.0": "norm_out", "head.2": "conv_out"}


def _rename_block(rest: str) -> str:
    if rest not in _RESIDUAL:
        raise KeyError(rest)
    return _RESIDUAL[rest]


def _rename(key: str) -> str:
    """One Wan2.2 original key -> its diffusers name (KeyError for a key the layout does not have)."""
    if key in _TOP:
        return _TOP[key]
    m = _STAGE.match(key)
    if m:  # stage i, entry j: resnets first, then the (down|up)sampler (resample / time_conv)
        side, kind, i, j, rest = m.groups()
        blocks = "down_blocks" if kind == "down" else "up_blocks"
        if rest.startswith(("resample.", "time_conv.")):
            return f"{side}.{blocks}.{i}.{kind}sampler.{rest}"
        return f"{side}.{blocks}.{i}.resnets.{j}.{_rename_block(rest)}"
    side, _, rest = key.partition(".")
    if rest.startswith("middle."):  # middle.0 / middle.2: resnets, middle.1: attention
        idx, _, tail = rest[len("middle."):].partition(".")
        if idx == "1":
            return f"{side}.mid_block.attentions.0.{tail}"
        return f"{side}.mid_block.resnets.{int(idx) // 2}.{_rename_block(tail)}"
    for old, new in _PART.items():
        if rest.startswith(old + "."):
            return f"{side}.{new}{rest[len(old):]}"
    raise KeyError(key)


def wan22_to_diffusers_keys(names, source: str = "VAE") -> dict[str, str]:
    """{original name: diffusers name} for a Wan2.2 VAE in Wan's own layout; CheckpointError naming keys it lacks."""
    out, unknown = {}, []
    for name in names:
        try:
            out[name] = _rename(name)
        except KeyError:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"{source}: keys that are not Wan2.2 VAE keys: {sorted(unknown)[:8]}")
    return out


def wan22_config_from_shapes(shapes: dict, source: str = "VAE") -> dict:
    """AutoencoderKLWan arguments of a Wan2.2 VAE in Wan's own layout, read from its tensor shapes."""
    try:
        base = shapes["encoder.conv1.weight"][0]
        stages = sorted({int(m.group(3)) for k in shapes if (m := _STAGE.match(k)) and m.group(1) == "encoder"})
        widths = [shapes[f"encoder.downsamples.{i}.downsamples.0.residual.6.weight"][0] for i in stages]
        res = len({int(m.group(4)) for k in shapes if (m := _STAGE.match(k)) and m.group(1) == "encoder"
                   and m.group(3) == "0" and "residual" in m.group(5)})
        temporal = [f"encoder.downsamples.{i}.downsamples.{res}.time_conv.weight" in shapes for i in stages[:-1]]
        z_dim = shapes["conv2.weight"][0]
        in_ch = shapes["encoder.conv1.weight"][1]
        dec_base = shapes["decoder.conv1.weight"][0] // (widths[-1] // base)
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source} is not a Wan2.2 VAE in Wan's layout (cannot read {exc})") from None
    patch = int(round((in_ch / 3) ** 0.5))
    return dict(base_dim=base, decoder_base_dim=dec_base, z_dim=z_dim, dim_mult=[w // base for w in widths],
                num_res_blocks=res, attn_scales=[], temperal_downsample=temporal, dropout=0.0, is_residual=True,
                in_channels=in_ch, out_channels=in_ch, patch_size=patch,
                scale_factor_spatial=patch * 2 ** (len(stages) - 1), scale_factor_temporal=2 ** sum(temporal))


def _require_diffusers():
    return require("diffusers", "the Wan VAE on the command line")

def _config_and_weights(path: Path) -> tuple[dict, Path]:
    if path.is_dir():
        config, weights = path / "config.json", path / WEIGHTS
        if not config.is_file():
            sub = path / "vae"
            if (sub / "config.json").is_file():
                return _config_and_weights(sub)
            raise FileNotFoundError(f"VAE config not found: {config} (pass the diffusers VAE folder)")
        if not weights.is_file():
            raise FileNotFoundError(f"VAE weights not found: {weights} (safetensors only)")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config} is not a readable JSON config: {exc}") from exc
        if data.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
            raise CheckpointError(f"{config}: {data.get('_class_name')} is not a Wan VAE (AutoencoderKLWan)")
        return {k: v for k, v in data.items() if not k.startswith("_")}, weights
    if not path.is_file():
        raise FileNotFoundError(f"VAE not found: {path}")
    shapes = {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}
    if WAN22_KEY in shapes:
        return wan22_config_from_shapes(shapes, str(path)), path
    if ORIGINAL_KEY in shapes:
        z = shapes.get("conv2.weight", (0,))[0]
        raise CheckpointError(f"{path} is a Wan 2.1 VAE ({z}-channel latents, Wan's original layout); X-Dub needs "
                              f"the Wan2.2 VAE (48 channels): Wan2.2_VAE.safetensors")
    if "quant_conv.weight" not in shapes:
        raise CheckpointError(f"{path} is not a diffusers Wan VAE (no quant_conv.weight)")
    return dict(WAN22_VAE_CONFIG), path


def check_vae_path(path: PathLike, channels: Optional[int] = None) -> dict:
    """The VAE's config from its files alone (nothing built); CheckpointError naming the file when it is not a
    Wan VAE with ``channels`` latent channels (a Wan 2.1 VAE has 16, Wan2.2 48)."""
    path = Path(path)
    config, weights = _config_and_weights(path)
    shapes = {k: tuple(v["shape"]) for k, v in read_header(weights).items() if k != "__metadata__"}
    z = shapes.get("post_quant_conv.weight", shapes.get("conv2.weight", (config.get("z_dim"),)))[0]
    if channels is not None and (z != channels or config.get("z_dim", z) != channels):
        hint = " (a Wan 2.1 VAE)" if z == 16 else ""
        raise CheckpointError(f"{weights} makes {z}-channel latents{hint}; X-Dub needs the Wan2.2 VAE "
                              f"({channels} channels)")
    return config


class DiffusersVAECodec:
    """frames [F,H,W,3] 0..1 <-> raw latent [1,C,T,h,w] through ``AutoencoderKLWan`` (the encoder's mean)."""

    def __init__(self, vae: Any):
        cfg = vae.config
        self.vae = vae
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = int(getattr(cfg, "scale_factor_spatial", None) or 8)
        self.temporal_factor = int(getattr(cfg, "scale_factor_temporal", None) or 4)

    def __repr__(self) -> str:
        return (f"DiffusersVAECodec(channels={self.latent_channels}, spatial={self.spatial_factor}, "
                f"temporal={self.temporal_factor})")

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F, H, W, 3], got {list(frames.shape)}")
        p = self._param
        x = frames.to(device=p.device, dtype=p.dtype).permute(3, 0, 1, 2)[None] * 2 - 1  # [F,H,W,3] -> [1,3,F,H,W]
        return self.vae.encode(x).latent_dist.mode().float()  # the mean, as the reference

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        p = self._param
        video = self.vae.decode(latent.to(device=p.device, dtype=p.dtype)).sample  # [1,3,F,H,W] in -1..1
        return ((video[0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1)  # [3,F,H,W] -> [F,H,W,3]


def load_diffusers_vae(path: PathLike, device: Union[str, torch.device] = "cpu",
                       dtype: Optional[torch.dtype] = torch.float32,
                       channels: Optional[int] = None) -> DiffusersVAECodec:
    """A :class:`DiffusersVAECodec` from a local folder or diffusers-named file (strict keys; no download)."""
    path = Path(path)
    config = check_vae_path(path, channels)
    _, weights = _config_and_weights(path)
    diffusers = _require_diffusers()
    with torch.device("meta"):
        vae = diffusers.AutoencoderKLWan(**config)
    tensors = read_tensors(weights)
    if WAN22_KEY in tensors:  # Wan's own layout: rename to diffusers' names
        names = wan22_to_diffusers_keys(tensors, str(weights))
        tensors = {names[k]: v for k, v in tensors.items()}
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad:
        raise CheckpointError(f"{weights} does not match AutoencoderKLWan of its config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, mis-shaped {bad[:8]}")
    vae.load_state_dict(tensors, strict=True, assign=True)
    vae = vae.to(device)
    if dtype is not None and dtype != next(vae.parameters()).dtype:
        vae = vae.to(dtype)
    vae = vae.eval().requires_grad_(False)
    logger.info("VAE %s: AutoencoderKLWan, %d channels", path, config.get("z_dim", 16))
    return DiffusersVAECodec(vae)
