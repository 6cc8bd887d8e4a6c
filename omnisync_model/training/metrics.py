"""Evaluation metrics: mouth-opening sync / leakage, preservation outside the mouth, seams, SyncNet LSE-C / LSE-D.

Shape legend:
  F      video frames;  frames [F, H, W, 3] float 0..1 (ComfyUI IMAGE layout)
  box    normalised (x0, y0, x1, y1), [F, 4] per frame or [4] for all frames; a pixel belongs to a box when its
         centre ((i + 0.5) / W, (j + 0.5) / H) lies inside it
  D      embedding size (1024 for SyncNet)
  T      MFCC frames at 100 Hz

Conventions: luminance for the mouth estimator is BT.709 (as the synthetic generator uses); SSIM runs on BT.601
luma (Y = 0.299 R + 0.587 G + 0.114 B), the usual choice for SSIM on colour video.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LUMA_709 = (0.2126, 0.7152, 0.0722)
_LUMA_601 = (0.299, 0.587, 0.114)


def _luma(frames: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """[F, H, W, 3] -> [F, H, W] float64 on the CPU."""
    return (_cpu(frames) * torch.tensor(weights, dtype=torch.float64)).sum(-1)


def _cpu(x: torch.Tensor) -> torch.Tensor:
    """Metrics run in float64 on the CPU whatever device the frames come from."""
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _box_mask(box: torch.Tensor, n_frames: int, height: int, width: int, margin: float = 0.0) -> torch.Tensor:
    """Normalised boxes [F, 4] or [4] (dilated by ``margin`` on each side) -> bool mask [F, H, W]."""
    box = _cpu(box).reshape(-1, 4).expand(n_frames, 4)  # [F, 4]
    box = box + torch.tensor([-margin, -margin, margin, margin], dtype=torch.float64)
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    inx = (xs.view(1, 1, -1) >= box[:, 0, None, None]) & (xs.view(1, 1, -1) <= box[:, 2, None, None])
    iny = (ys.view(1, -1, 1) >= box[:, 1, None, None]) & (ys.view(1, -1, 1) <= box[:, 3, None, None])
    return inx & iny  # [F, H, W]


# ---- Mouth opening, sync and leakage -------------------------------------------------------------------------------


def estimate_mouth_opening(
    frames: torch.Tensor, mouth_box, quantile: float = 0.75, dark_level: float = 0.04
) -> torch.Tensor:
    """Mouth opening measured in the pixels: the dark area inside the mouth box -> [F] float32.

    Per frame, ``ref`` is the ``quantile`` of the luminance inside the box (the skin / lips / paper around the
    mouth) and a pixel's darkness is clamp((ref - lum) / max(ref - dark_level, 0.05), 0, 1): 1 for the mouth
    interior, 0 for the surroundings, and proportional to coverage for partly covered edge pixels, so sub-pixel
    motion and blur change the result little. The summed darkness (a pixel area) is divided by the clip's median
    box area, a per-clip constant: the result is a dark fraction of a typical box that, unlike a per-frame
    fraction, does not shrink when a rolled head enlarges the axis-aligned box. It uses only the frames and the
    box, never the generator's internals.
    """
    n, h, w, _ = frames.shape
    inside = _box_mask(mouth_box, n, h, w).flatten(1)  # [F, H*W]
    count = inside.sum(1)
    if bool((count == 0).any()):
        logger.warning("estimate_mouth_opening: %d frame(s) have an empty mouth box", int((count == 0).sum()))
    lum = _luma(frames, LUMA_709).flatten(1)  # [F, H*W]
    ref = torch.nanquantile(torch.where(inside, lum, torch.nan), quantile, dim=1, keepdim=True)  # [F, 1]
    dark = ((ref.nan_to_num(0.0) - lum) / (ref.nan_to_num(1.0) - dark_level).clamp_min(0.05)).clamp(0.0, 1.0)
    area = (dark * inside).sum(1)  # [F] pixels
    return (area / count.double().median().clamp_min(1.0)).float()


def pearson_r(a, b) -> float:
    """Pearson correlation of two equal-length sequences; 0.0 (with a warning) when either is constant."""
    x, y = _cpu(a).reshape(-1).numpy(), _cpu(b).reshape(-1).numpy()
    if x.shape != y.shape:
        raise ValueError(f"pearson_r: lengths differ ({x.size} vs {y.size})")
    if x.size < 2 or _is_constant(x) or _is_constant(y):
        logger.warning("pearson_r: a sequence is constant (or shorter than 2); returning 0.0")
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    return float(np.clip((x * y).sum() / math.sqrt(float((x * x).sum()) * float((y * y).sum())), -1.0, 1.0))


def _is_constant(x: np.ndarray) -> bool:
    return float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def sync_score(output_frames: torch.Tensor, mouth_box, gt_opening) -> float:
    """Correlation between the opening measured in the output and the ground truth of the driving audio."""
    return pearson_r(estimate_mouth_opening(output_frames, mouth_box), gt_opening)


def leakage_score(output_frames: torch.Tensor, mouth_box, source_opening) -> float:
    """Correlation between the opening measured in the output and the source video's own opening (want ~0)."""
    return pearson_r(estimate_mouth_opening(output_frames, mouth_box), source_opening)


# ---- Preservation outside the mouth, seams -------------------------------------------------------------------------


def psnr_outside(a: torch.Tensor, b: torch.Tensor, mouth_box, margin: float = 0.03) -> float:
    """PSNR (dB, peak 1.0) over all pixels and channels outside the mouth box dilated by ``margin``.

    ``margin`` is a fraction of the frame side added on every side of the box. The MSE is pooled over all frames.
    Identical inputs give ``math.inf``; NaN (with a warning) when no pixel is outside the box.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr_outside: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    n, h, w, _ = a.shape
    keep = ~_box_mask(mouth_box, n, h, w, margin)  # [F, H, W]
    if not bool(keep.any()):
        logger.warning("psnr_outside: the mouth box covers every pixel")
        return math.nan
    err = ((_cpu(a) - _cpu(b)) ** 2)[keep]  # [P, 3]
    mse = float(err.mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)  # [1, 1, k, k]


def ssim_outside(a: torch.Tensor, b: torch.Tensor, mouth_box, margin: float = 0.03) -> float:
    """Mean SSIM on BT.601 luma over windows that lie entirely outside the dilated mouth box.

    11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2 (data range 1), 'valid' windows only (no padding).
    A window counts only when none of its pixels is in the box dilated by ``margin``, so edits inside the mouth
    cannot change the score. Identical inputs give 1.0; NaN (with a warning) when no window qualifies.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim_outside: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    n, h, w, _ = a.shape
    if h < 11 or w < 11:
        raise ValueError("ssim_outside needs frames of at least 11x11 pixels")
    win = _gaussian_window()
    x, y = _luma(a, _LUMA_601).unsqueeze(1), _luma(b, _LUMA_601).unsqueeze(1)  # [F, 1, H, W]
    mx, my = F.conv2d(x, win), F.conv2d(y, win)  # [F, 1, H-10, W-10]
    vx, vy = F.conv2d(x * x, win) - mx * mx, F.conv2d(y * y, win) - my * my
    cxy = F.conv2d(x * y, win) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    inside = _box_mask(mouth_box, n, h, w, margin).double().unsqueeze(1)  # [F, 1, H, W]
    clean = F.max_pool2d(inside, 11, stride=1) == 0  # window has no box pixel [F, 1, H-10, W-10]
    if not bool(clean.any()):
        logger.warning("ssim_outside: no 11x11 window lies outside the mouth box")
        return math.nan
    return float(ssim[clean].mean())


def seam_score(frames: torch.Tensor, boundaries: Sequence[int]) -> float:
    """Mean |frame b - frame b-1| at window boundaries b divided by the same mean at all other frames.

    1.0 for a uniformly changing video; > 1 when boundaries jump. Boundaries outside 1..F-1 are ignored; with
    none left the score is 1.0 (no seam to see), and NaN (with a warning) when every frame pair is a boundary.
    """
    n = frames.shape[0]
    at = sorted({int(b) for b in boundaries if 1 <= int(b) <= n - 1})
    if not at:
        logger.debug("seam_score: no boundary inside 1..%d", n - 1)
        return 1.0
    frames = _cpu(frames)
    diffs = (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)  # [F-1], diffs[b-1] = b vs b-1
    is_seam = torch.zeros(n - 1, dtype=torch.bool)
    is_seam[[b - 1 for b in at]] = True
    if bool(is_seam.all()):
        logger.warning("seam_score: every frame pair is a boundary; nothing to compare with")
        return math.nan
    seam, rest = float(diffs[is_seam].mean()), float(diffs[~is_seam].mean())
    if rest == 0.0:
        return 1.0 if seam == 0.0 else math.inf
    return seam / rest


# ---- Mouth colour: pale blobs, smears and casts ----------------------------------------------------------------------

_SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),  # sRGB primaries, D65 white (IEC 61966-2-1)
                (0.2126729, 0.7151522, 0.0721750),
                (0.0193339, 0.1191920, 0.9503041))
_D65_WHITE = (0.95047, 1.0, 1.08883)
OFF_COLOUR_DELTA_E = 10.0  # CIE76 distance beyond which a colour is not in the source's mouth palette
OFF_COLOUR_AREA = 0.05  # a frame is off-colour when more than this fraction of its mouth box is
WASHED_OUT_CONTRAST = 0.75  # a mouth with under 3/4 of the flattest source mouth's L* contrast is washed out
PALETTE_STEP = 1.0  # Lab grid the source palette is rounded to (keeps it small; far below the 10 delta-E threshold)


def rgb_to_lab(frames: torch.Tensor) -> torch.Tensor:
    """sRGB [..., 3] in 0..1 -> CIE L*a*b* (D65) [..., 3] float64 on the CPU; L in 0..100."""
    c = _cpu(frames).clamp(0.0, 1.0)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # undo the sRGB transfer curve
    xyz = lin @ torch.tensor(_SRGB_TO_XYZ, dtype=torch.float64).T / torch.tensor(_D65_WHITE, dtype=torch.float64)
    eps, kappa = (6.0 / 29.0) ** 3, (29.0 / 6.0) ** 2 / 3.0
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), kappa * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def mouth_palette(source: torch.Tensor, mouth_box, step: float = PALETTE_STEP) -> torch.Tensor:
    """Every Lab colour the source clip shows inside its mouth boxes, over ALL its frames (each opening it makes,
    lips, interior, teeth, skin, occluders), rounded to a ``step`` grid and deduplicated -> [P, 3] float64."""
    n, h, w, _ = source.shape
    inside = _box_mask(mouth_box, n, h, w)  # [F, H, W]
    lab = rgb_to_lab(source)[inside]  # [pixels, 3]
    return torch.unique(torch.round(lab / step) * step, dim=0)


def _off_palette(output: torch.Tensor, source: torch.Tensor, mouth_box, delta_e: float) -> torch.Tensor:
    """Per frame, the fractions of mouth-box pixels that are off the source palette, and that are off it AND
    lighter (L*) than their nearest palette colour -> [F, 2] float64 (NaN for an empty box)."""
    if output.shape != source.shape:
        raise ValueError(f"off_palette_fraction: shapes differ {tuple(output.shape)} vs {tuple(source.shape)}")
    n, h, w, _ = output.shape
    palette = mouth_palette(source, mouth_box)  # [P, 3]
    inside = _box_mask(mouth_box, n, h, w)  # [F, H, W]
    lab = rgb_to_lab(output)  # [F, H, W, 3]
    out = torch.full((n, 2), math.nan, dtype=torch.float64)
    for i in range(n):
        pixels = lab[i][inside[i]]  # [p, 3]
        if pixels.shape[0] and palette.shape[0]:
            dist, idx = torch.cdist(pixels, palette).min(1)  # [p] distance to (and index of) the closest colour
            off = dist > delta_e
            lighter = off & (pixels[:, 0] > palette[idx, 0])
            out[i] = torch.stack([off.double().mean(), lighter.double().mean()])
    return out


def off_palette_fraction(output: torch.Tensor, source: torch.Tensor, mouth_box,
                         delta_e: float = OFF_COLOUR_DELTA_E) -> torch.Tensor:
    """Per output frame, the fraction of its mouth-box pixels farther than ``delta_e`` (CIE76) from every colour of
    the source's mouth palette -> [F] float64 (NaN for an empty box).

    A re-drawn mouth uses the colours the source's mouths use (a new opening mixes the same lips, interior and
    skin); a pale blob or a colour smear adds colours none of them has. The palette's own rounding moves a colour by
    at most step * sqrt(3) / 2, well inside ``delta_e``.
    """
    return _off_palette(output, source, mouth_box, delta_e)[:, 0]


def mouth_contrast(frames: torch.Tensor, mouth_box) -> torch.Tensor:
    """Standard deviation of L* over each frame's mouth-box pixels -> [F] float64 (NaN for an empty box)."""
    n, h, w, _ = frames.shape
    inside = _box_mask(mouth_box, n, h, w).flatten(1).double()  # [F, H*W]
    lum = rgb_to_lab(frames)[..., 0].flatten(1)  # [F, H*W]
    count = inside.sum(1)
    mean = (lum * inside).sum(1) / count
    return ((((lum - mean[:, None]) ** 2) * inside).sum(1) / count).sqrt()


def mouth_colour_outliers(output: torch.Tensor, source: torch.Tensor, mouth_box,
                          delta_e: float = OFF_COLOUR_DELTA_E, area: float = OFF_COLOUR_AREA,
                          contrast: float = WASHED_OUT_CONTRAST) -> dict:
    """Output frames whose mouth leaves what the source's mouths look like, by two complementary tests -> dict of
    bool [F]:
      ``off_palette``  more than ``area`` of the box is colours the source's mouths never show
                       (:func:`off_palette_fraction`): smears, colour fringes, casts, whitish blobs;
      ``washed_out``   the box's L* contrast is below ``contrast`` x the lowest of any source frame: even a closed
                       source mouth shows its lips and line, a blob of skin or teeth colour erases them (its colours
                       may all be in the palette);
      ``pale``         washed out, or more than ``area`` of the box off the palette AND lighter than the nearest
                       source colour: the pale blobs;
      ``any``          off palette or washed out.
    """
    frac = _off_palette(output, source, mouth_box, delta_e)  # [F, 2]
    low = torch.nan_to_num(mouth_contrast(source, mouth_box), nan=math.inf).min()
    washed = mouth_contrast(output, mouth_box) < contrast * low
    off = frac[:, 0] > area
    return {"off_palette": off, "washed_out": washed, "pale": washed | (frac[:, 1] > area), "any": off | washed}


def off_colour_fraction(output: torch.Tensor, source: torch.Tensor, mouth_box, **kwargs) -> float:
    """Fraction of output frames flagged by :func:`mouth_colour_outliers` (0: every mouth looks like a source mouth)."""
    return float(mouth_colour_outliers(output, source, mouth_box, **kwargs)["any"].double().mean())


# ---- SyncNet LSE-C / LSE-D (syncnet_python's definitions) ----------------------------------------------------------


def lse_scores(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = 15) -> tuple[float, float, int]:
    """LSE-C, LSE-D and the AV offset from per-frame embeddings [F, D] (as syncnet_python's ``evaluate``).

    For each video frame i and each shift j in -vshift..vshift, the distance to audio frame i + j (zero-padded at
    the ends) is taken; ``mdist`` [2 * vshift + 1] is the mean over frames. LSE-D = min(mdist),
    LSE-C = median(mdist) - min(mdist), offset = -argmin shift: audio embedding t matches video embedding
    t + offset (offset > 0: the sound comes ``offset`` frames before the lips).
    """
    v, a = torch.as_tensor(video_emb).float(), torch.as_tensor(audio_emb).float()
    if v.dim() != 2 or v.shape != a.shape:
        raise ValueError(f"lse_scores: want two [F, D] tensors of one shape, got {tuple(v.shape)}, {tuple(a.shape)}")
    win = 2 * vshift + 1
    padded = F.pad(a, (0, 0, vshift, vshift))  # [F + 2 vshift, D]
    windows = padded.unfold(0, win, 1).transpose(1, 2)  # [F, win, D]: row j = audio frame i + j - vshift
    dists = F.pairwise_distance(v.unsqueeze(1).expand_as(windows), windows)  # [F, win] (eps 1e-6 as torch's)
    mdist = dists.mean(0)  # [win]
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return float(conf), float(minval), int(vshift - int(minidx))


def _conv_bn(ops, conv: str, bn, c_in: int, c_out: int, kw: dict, **conv_args) -> list:
    return [getattr(ops, conv)(c_in, c_out, **conv_args, **kw), bn(c_out, **kw), torch.nn.ReLU(inplace=True)]


def _audio_stream(ops, kw: dict) -> torch.nn.Sequential:
    bn, pool = torch.nn.BatchNorm2d, torch.nn.MaxPool2d
    return torch.nn.Sequential(
        *_conv_bn(ops, "Conv2d", bn, 1, 64, kw, kernel_size=3, padding=1), pool(1, 1),
        *_conv_bn(ops, "Conv2d", bn, 64, 192, kw, kernel_size=3, padding=1), pool(3, stride=(1, 2)),
        *_conv_bn(ops, "Conv2d", bn, 192, 384, kw, kernel_size=3, padding=1),
        *_conv_bn(ops, "Conv2d", bn, 384, 256, kw, kernel_size=3, padding=1),
        *_conv_bn(ops, "Conv2d", bn, 256, 256, kw, kernel_size=3, padding=1), pool(3, stride=2),
        *_conv_bn(ops, "Conv2d", bn, 256, 512, kw, kernel_size=(5, 4)),
    )


def _lip_stream(ops, kw: dict) -> torch.nn.Sequential:
    bn, pool = torch.nn.BatchNorm3d, torch.nn.MaxPool3d
    return torch.nn.Sequential(
        *_conv_bn(ops, "Conv3d", bn, 3, 96, kw, kernel_size=(5, 7, 7), stride=(1, 2, 2)),
        pool((1, 3, 3), stride=(1, 2, 2)),
        *_conv_bn(ops, "Conv3d", bn, 96, 256, kw, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
        pool((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        *_conv_bn(ops, "Conv3d", bn, 256, 256, kw, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        *_conv_bn(ops, "Conv3d", bn, 256, 256, kw, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        *_conv_bn(ops, "Conv3d", bn, 256, 256, kw, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        pool((1, 3, 3), stride=(1, 2, 2)),
        *_conv_bn(ops, "Conv3d", bn, 256, 512, kw, kernel_size=(1, 6, 6)),
    )


def _fc_head(ops, embed_dim: int, kw: dict) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        ops.Linear(512, 512, **kw), torch.nn.BatchNorm1d(512, **kw), torch.nn.ReLU(), ops.Linear(512, embed_dim, **kw)
    )


class SyncNet(torch.nn.Module):
    """syncnet_python's model ``S`` with the same parameter names (netcnnaud, netfcaud, netcnnlip, netfclip).

    Audio: MFCC windows [B, 1, 13, 20] (13 coefficients x 20 frames at 100 Hz = 0.2 s) -> [B, D].
    Lips: 5 stacked face crops [B, 3, 5, 224, 224] (BGR, 0..255, as syncnet_python feeds cv2 frames) -> [B, D].
    Both streams end in 512 x 1 x 1 feature maps, flattened for the two-layer heads.
    """

    def __init__(self, embed_dim: int = 1024, device=None, dtype=None, operations=torch.nn):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.netcnnaud = _audio_stream(operations, kw)
        self.netfcaud = _fc_head(operations, embed_dim, kw)
        self.netfclip = _fc_head(operations, embed_dim, kw)
        self.netcnnlip = _lip_stream(operations, kw)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(mfcc)  # [B, 512, 1, 1]
        return self.netfcaud(mid.flatten(1))  # flatten -> [B, 512] -> [B, D]

    def forward_lip(self, clips: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(clips)  # [B, 512, 1, 1, 1]
        return self.netfclip(mid.flatten(1))  # flatten -> [B, 512] -> [B, D]


def load_syncnet_state(model: SyncNet, state: dict[str, torch.Tensor]) -> SyncNet:
    """Copy ``state`` into ``model`` with strict key and shape checks (``num_batches_tracked`` may be absent)."""
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"SyncNet weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]} ({len(missing)}, {len(unexpected)}, {len(wrong)} in all)"
        )
    model.load_state_dict({**{k: own[k] for k in optional}, **state}, strict=True)
    return model


def load_syncnet(path: str, device=None, dtype=None) -> SyncNet:
    """A SyncNet in eval mode from a user-supplied safetensors file (syncnet_python key names; never pickle)."""
    from safetensors.torch import load_file

    model = SyncNet(device=device, dtype=dtype)
    return load_syncnet_state(model, load_file(str(path))).eval()


def _mel_filterbank(n_filters: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters [n_filters, n_fft // 2 + 1] placed on FFT bins as python_speech_features does."""
    top = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    mels = torch.linspace(0.0, top, n_filters + 2, dtype=torch.float64)
    bins = torch.floor((n_fft + 1) * 700.0 * (10.0 ** (mels / 2595.0) - 1.0) / sample_rate)  # [n_filters + 2]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).view(1, -1)  # [1, n_bins]
    lo, mid, hi = bins[:-2, None], bins[1:-1, None], bins[2:, None]  # [n_filters, 1] each
    rise = torch.where((k >= lo) & (k < mid), (k - lo) / (mid - lo).clamp_min(1e-12), 0.0)
    fall = torch.where((k >= mid) & (k < hi), (hi - k) / (hi - mid).clamp_min(1e-12), 0.0)
    return rise + fall


def mfcc(wave16k: torch.Tensor, sample_rate: int = 16000, n_coeffs: int = 13) -> torch.Tensor:
    """MFCC [n_coeffs, T] at 100 Hz, approximating ``python_speech_features.mfcc`` with its defaults.

    As syncnet_python reads 16-bit PCM, the float waveform (-1..1) is scaled by 32768. Steps: pre-emphasis 0.97,
    25 ms rectangular frames every 10 ms (T = 1 + ceil((N - 400) / 160), zero-padded), 512-point power spectrum,
    26 mel filters (0..8 kHz), log, orthonormal DCT-II, lifter 22, coefficient 0 replaced by log frame energy.
    """
    if sample_rate != 16000:
        raise ValueError("SyncNet MFCCs need 16 kHz audio; resample first")
    x = torch.as_tensor(wave16k, dtype=torch.float64).reshape(-1) * 32768.0
    x = torch.cat([x[:1], x[1:] - 0.97 * x[:-1]])
    n, frame, step, n_fft = x.numel(), 400, 160, 512
    count = 1 if n <= frame else 1 + math.ceil((n - frame) / step)
    x = F.pad(x, (0, (count - 1) * step + frame - n))
    power = torch.fft.rfft(x.unfold(0, frame, step), n=n_fft).abs() ** 2 / n_fft  # [T, 257]
    eps = float(np.finfo(float).eps)
    energy = power.sum(1)
    energy = torch.where(energy == 0, eps, energy)
    feat = power @ _mel_filterbank(26, n_fft, sample_rate).T  # [T, 26]
    feat = torch.log(torch.where(feat == 0, eps, feat))
    m = torch.arange(26, dtype=torch.float64)
    dct = torch.cos(math.pi * torch.arange(n_coeffs, dtype=torch.float64)[:, None] * (2 * m + 1) / 52)
    dct = dct * torch.where(m[:n_coeffs, None] == 0, math.sqrt(1 / 26), math.sqrt(2 / 26))  # orthonormal [C, 26]
    ceps = feat @ dct.T  # [T, C]
    ceps = ceps * (1.0 + 11.0 * torch.sin(math.pi * torch.arange(n_coeffs, dtype=torch.float64) / 22.0))
    ceps[:, 0] = torch.log(energy)
    return ceps.T.float()  # [C, T]


def syncnet_embeddings(
    model: SyncNet, face_crops: torch.Tensor, wave16k: torch.Tensor, fps: float = 25.0, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window embeddings as syncnet_python's ``evaluate``: -> (video [K, D], audio [K, D]).

    face_crops [F, h, w, 3] RGB 0..1 (resized to 224x224 when needed; converted to BGR 0..255). Window k covers
    frames k..k+4 and MFCC columns round(k * 100 / fps) .. +20; K = min(F, N // (16000 / fps)) - 5. SyncNet was
    trained on 25 fps video: resample other rates first for comparable numbers.
    """
    crops = torch.as_tensor(face_crops, dtype=torch.float32)
    if crops.shape[1:3] != (224, 224):
        crops = F.interpolate(crops.permute(0, 3, 1, 2), size=(224, 224), mode="bilinear", align_corners=False)
        crops = crops.permute(0, 2, 3, 1)  # back to [F, 224, 224, 3]
    video = (crops.flip(-1) * 255.0).permute(3, 0, 1, 2)  # RGB -> BGR, [3, F, 224, 224]
    ceps = mfcc(wave16k)  # [13, T]
    n_windows = min(crops.shape[0], int(len(wave16k) // (16000.0 / fps))) - 5
    if n_windows < 1:
        raise ValueError("syncnet_embeddings needs at least 6 frames of video and audio")
    starts = [int(round(k * 100.0 / fps)) for k in range(n_windows)]
    ceps = F.pad(ceps, (0, max(0, starts[-1] + 20 - ceps.shape[1])))  # zero columns past the end
    param = next(model.parameters())
    vid, aud = [], []
    with torch.no_grad():
        for s in range(0, n_windows, batch_size):
            ks = range(s, min(n_windows, s + batch_size))
            lips = torch.stack([video[:, k : k + 5] for k in ks])  # [B, 3, 5, 224, 224]
            cc = torch.stack([ceps[None, :, starts[k] : starts[k] + 20] for k in ks])  # [B, 1, 13, 20]
            vid.append(model.forward_lip(lips.to(param)).float().cpu())
            aud.append(model.forward_aud(cc.to(param)).float().cpu())
    return torch.cat(vid), torch.cat(aud)


def lse_from_video(
    model: SyncNet, face_crops: torch.Tensor, wave16k: torch.Tensor, fps: float = 25.0, vshift: int = 15
) -> tuple[float, float, int]:
    """(LSE-C, LSE-D, offset) of face crops against 16 kHz audio with a loaded SyncNet."""
    model.eval()
    return lse_scores(*syncnet_embeddings(model, face_crops, wave16k, fps), vshift=vshift)
