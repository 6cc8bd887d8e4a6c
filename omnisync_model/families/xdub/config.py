"""X-Dub (Wan2.2-TI2V-5B + audio cross-attention) configuration: a frozen dataclass, named presets, the config
inferred from a state dict's tensor shapes, and detection of the X-Dub key layout.

Facts (X-Dub's released checkpoint, built by DiffSynth from ``LipSyncModel`` with the Wan2.2-TI2V-5B arguments):
dim 3072, 30 blocks, 24 heads (head width 128), FFN 14336, 48 latent channels in and out, patch (1, 2, 2), text
width 4096 (umt5-xxl), 256 sinusoidal timestep features, every block has an audio cross-attention, and the audio
projection maps 2048 features (Whisper 1280 + wav2vec2 768) through 1536 wide layers to the model width.
1,245 tensors, 6,292,551,360 values, no key prefix.

Not recoverable from shapes (every Wan norm is over the full width): the number of heads. Wan DiTs all use a head
width of 128 and the audio projection's attention a head width of 64; :func:`infer_config` assumes those unless told.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

WAN_HEAD_DIM = 128  # every Wan 2.x DiT (1.3B: 1536/12, 5B: 3072/24, 14B: 5120/40)
AUDIO_HEAD_DIM = 64  # X-Dub's audio projection attention (diffusers Attention, dim_head 64)
RELEASED_HASH = "0196e3de8b3ccced7e7e939e7f901e0b"  # DiffSynth's key hash that X-Dub's loader matches
AUDIO_KEY = re.compile(r"blocks\.(\d+)\.audio_attn\.q\.weight$")
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
LAYER_KEY = re.compile(r"audio_embedding\.layers\.(\d+)\.")
# keys whose presence identifies the Wan DiT body and X-Dub's audio additions
WAN_KEYS = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
            "time_projection.1.weight", "head.head.weight", "blocks.0.self_attn.q.weight")
AUDIO_PROJ_KEYS = ("audio_embedding.proj_in.weight", "audio_embedding.proj_out.weight",
                   "audio_embedding.layers.0.pos_embed.pe", "audio_embedding.layers.0.ff.net.0.proj.weight")


@dataclass(frozen=True)
class XDubConfig:
    """Hyper-parameters of the X-Dub DiT and its audio projection (defaults: the released model)."""

    name: str = "custom"
    in_channels: int = 48
    out_channels: int = 48
    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 3072
    depth: int = 30
    heads: int = 24
    ffn_dim: int = 14336
    text_dim: int = 4096
    freq_dim: int = 256
    rope_theta: float = 10000.0
    # audio projection (per latent frame: audio_tokens steps of audio_in_dim features)
    audio_in_dim: int = 2048
    audio_hidden: int = 1536
    audio_layers: int = 4
    audio_heads: int = 24
    audio_pos_len: int = 100  # rows of the sinusoidal position table (a stored buffer)
    audio_tokens: int = 8  # audio steps per latent frame (fixed by the reference's windowing, not by shapes)
    audio_blocks: Optional[tuple[int, ...]] = None  # blocks with audio cross-attention; None = every block
    text_len: int = 512  # the reference pads the umt5 context to this many tokens (zeros past the prompt)

    def __post_init__(self) -> None:
        errors = []
        for name in ("in_channels", "out_channels", "dim", "depth", "heads", "ffn_dim", "text_dim", "freq_dim",
                     "audio_in_dim", "audio_hidden", "audio_layers", "audio_heads", "audio_pos_len", "audio_tokens"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or min(self.patch_size) <= 0:
            errors.append(f"patch_size must be (1, ph, pw) (the model function assumes one frame per token), "
                          f"got {self.patch_size}")
        if self.heads > 0 and self.dim % self.heads:
            errors.append(f"dim={self.dim} is not divisible by heads={self.heads}")
        elif self.heads > 0 and (self.head_dim % 2 or (self.head_dim // 3) % 2):
            errors.append(f"head width {self.head_dim} does not split into Wan's 3D RoPE (needs an even width "
                          f"whose third is even)")
        if self.audio_heads > 0 and self.audio_hidden % self.audio_heads:
            errors.append(f"audio_hidden={self.audio_hidden} is not divisible by audio_heads={self.audio_heads}")
        if self.freq_dim % 2:
            errors.append(f"freq_dim must be even, got {self.freq_dim}")
        if self.audio_blocks is not None and any(not 0 <= i < self.depth for i in self.audio_blocks):
            errors.append(f"audio_blocks {self.audio_blocks} are not all in 0..{self.depth - 1}")
        if errors:
            raise ValueError("invalid XDubConfig: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patch_volume(self) -> int:
        return self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

    def has_audio(self, block: int) -> bool:
        return self.audio_blocks is None or block in self.audio_blocks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "XDubConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, XDubConfig] = {
    "full": XDubConfig(name="full"),
    # tests: a forward pass in milliseconds on CPU (head width 32, audio head width 16)
    "tiny": XDubConfig(name="tiny", in_channels=16, out_channels=16, dim=64, depth=2, heads=2, ffn_dim=128,
                       text_dim=32, freq_dim=256, audio_in_dim=64, audio_hidden=48, audio_layers=2,
                       audio_heads=3, audio_pos_len=100),
}


def get_preset(name: str) -> XDubConfig:
    """A named preset; ``KeyError`` naming the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown X-Dub preset {name!r}; known presets: {sorted(PRESETS)}") from None


# --------------------------------------------------------------------------------------------- detection


def is_wan_layout(shapes: Mapping[str, Sequence[int]]) -> bool:
    """True when the keys are those of a Wan 2.x DiT (DiffSynth / Wan-AI naming, no prefix)."""
    return all(k in shapes for k in WAN_KEYS)


def detect_xdub(shapes: Mapping[str, Sequence[int]]) -> bool:
    """True for X-Dub's key layout: a Wan DiT body plus the audio projection and per-block audio attention.

    A plain Wan2.2-TI2V-5B checkpoint has the body without the audio keys, so it is not X-Dub.
    """
    return (is_wan_layout(shapes) and all(k in shapes for k in AUDIO_PROJ_KEYS)
            and any(AUDIO_KEY.match(k) for k in shapes))


def describe_layout(shapes: Mapping[str, Sequence[int]]) -> str:
    """Why a header is not X-Dub's, in one sentence (used in load errors)."""
    if not shapes:
        return "it holds no tensors"
    if is_wan_layout(shapes):
        missing = [k for k in AUDIO_PROJ_KEYS if k not in shapes]
        if not any(AUDIO_KEY.match(k) for k in shapes):
            missing.append("blocks.N.audio_attn.*")
        return (f"it is a plain Wan DiT without X-Dub's audio layers (missing {', '.join(missing)}): probably the "
                f"Wan2.2-TI2V-5B base model, not X-Dub_model.safetensors")
    prefixes = sorted({k.split(".", 1)[0] for k in shapes})[:6]
    return f"it does not have the Wan DiT keys ({', '.join(WAN_KEYS[:3])}, ...); its top-level names are {prefixes}"


def _indices(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern) -> list[int]:
    return sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def _count(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern, what: str) -> int:
    found = _indices(shapes, pattern)
    if found != list(range(len(found))):
        raise ValueError(f"{what} indices are not consecutive from 0: {found}")
    return len(found)


def infer_config(shapes: Mapping[str, Sequence[int]], head_dim: int = WAN_HEAD_DIM,
                 audio_head_dim: int = AUDIO_HEAD_DIM, name: str = "inferred") -> XDubConfig:
    """The :class:`XDubConfig` of an X-Dub-layout state dict from its tensor shapes ({name: shape}).

    ``head_dim`` / ``audio_head_dim``: head widths, which shapes cannot tell (Wan's 128 and X-Dub's 64 by default).
    Raises ``ValueError`` (naming the key) when the layout is not X-Dub's or the shapes contradict each other.
    """
    if not detect_xdub(shapes):
        raise ValueError(describe_layout(shapes))
    s = {k: tuple(v) for k, v in shapes.items()}
    try:
        dim, in_ch, *patch = s["patch_embedding.weight"]
        depth = _count(s, BLOCK_KEY, "blocks")
        audio_hidden, audio_in = s["audio_embedding.proj_in.weight"]
        audio_ids = tuple(_indices(s, AUDIO_KEY))
        values = dict(
            name=name, in_channels=in_ch, patch_size=tuple(patch), dim=dim, depth=depth,
            out_channels=s["head.head.weight"][0] // max(1, patch[0] * patch[1] * patch[2]),
            heads=dim // head_dim if dim % head_dim == 0 else 0,
            ffn_dim=s["blocks.0.ffn.0.weight"][0], text_dim=s["text_embedding.0.weight"][1],
            freq_dim=s["time_embedding.0.weight"][1], audio_in_dim=audio_in, audio_hidden=audio_hidden,
            audio_layers=_count(s, LAYER_KEY, "audio_embedding.layers"),
            audio_heads=audio_hidden // audio_head_dim if audio_hidden % audio_head_dim == 0 else 0,
            audio_pos_len=s["audio_embedding.layers.0.pos_embed.pe"][1],
            audio_blocks=None if audio_ids == tuple(range(depth)) else audio_ids,
        )
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"cannot read the X-Dub config from the shapes: {exc!r}") from exc
    if values["heads"] == 0:
        raise ValueError(f"width {dim} is not a multiple of the head width {head_dim}; pass head_dim")
    if values["audio_heads"] == 0:
        raise ValueError(f"audio width {audio_hidden} is not a multiple of the audio head width {audio_head_dim}; "
                         f"pass audio_head_dim")
    out = s["audio_embedding.proj_out.weight"][0]
    if out != dim:
        raise ValueError(f"audio_embedding.proj_out.weight gives width {out}, the DiT width is {dim}")
    return XDubConfig(**values)


def diffsynth_hash(shapes: Mapping[str, Sequence[int]]) -> str:
    """DiffSynth's model hash of a state dict: md5 of the sorted entries ``name:d0_d1_...`` and ``name``, joined by
    commas. X-Dub's loader recognises the released file by :data:`RELEASED_HASH`."""
    entries = []
    for key, shape in shapes.items():
        entries.append(key + ":" + "_".join(str(int(d)) for d in shape))
        entries.append(key)
    return hashlib.md5(",".join(sorted(entries)).encode("utf-8")).hexdigest()
