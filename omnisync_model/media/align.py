"""LatentSync's face alignment: a similarity transform from three landmark points to a fixed template, the aligned
crop at 256 / 512 px, and the restore (inverse warp with an eroded, blurred mask) that leaves every pixel outside
the restored region bit-exact.

Facts taken from the reference (bytedance/LatentSync, ``latentsync/utils/affine_transform.py`` and
``image_processor.py``):

* three points (``image_processor.py`` lines 61-65): the mean of each eyebrow and of four nose points of
  InsightFace's 106-point landmarks (left brow 43, 48, 49, 51, 50; right brow 101..105; nose 74, 77, 83, 86);
* template (``affine_transform.py`` lines 13-18): (17, 20), (58, 20), (37.5, 40) times r = resolution / 256 * 2.8,
  in a crop of int(75 r) x int(100 r) pixels (W x H: 210 x 280 at 256), warped bilinearly with grey (127) fill and
  then resized to resolution x resolution;
* the transform (lines 98-134): both point sets centred and divided by their standard deviation (over all
  coordinates), rotation from the SVD of their covariance (reflection removed), scale std_dst / std_src;
* smoothing (lines 136-143): the difference of the normalised third (nose) points, exponentially smoothed over frames
  (b_t = 0.2 b_{t-1} + 0.8 d_t), is added to the translation (in crop pixels; d compares the normalised points
  before the rotation, so it is not zero for a rotated face: the reference's rule, kept as it is);
* restore (lines 44-96): inverse warp of the face and of an all-ones crop mask, the mask eroded 2 x 2, then eroded
  again by 2 w (w = int(sqrt(mask area)) // 20) and Gaussian-blurred (size 2 w + 1, sigma 0.3 ((size - 1) / 2 - 1)
  + 0.8); out = soft * (mask * face) + (1 - soft) * frame.

``tests/test_latentsync_align.py`` compares all of it with a golden made by the reference's own ``AlignRestore``.
Our deviations (the geometry is the same): the warp to the 75:100 crop and the resize to the square resolution are
one affine warp (one resampling instead of bilinear + Lanczos); the erosions are min filters (cv2's border rule:
the frame's edge does not erode); the restore works on the face's bounding region of the frame only, and pixels
where the soft mask is 0 are copied from the input (bit-exact); landmarks are not rounded to whole pixels unless
``round_points``.

Landmarks from any source: [F,P,2] (or [F,P,3], z ignored) in pixel coordinates (pixel centres at integers) with
P = 478 / 468 (MediaPipe face mesh: :data:`MEDIAPIPE_POINTS`), 106 (InsightFace: :data:`INSIGHTFACE_POINTS`) or
3 (the three points themselves). NaN landmarks mark frames without a face: they get no transform and are passed
through by :func:`restore`. :func:`landmarks_from_track` converts an ``omnisync_model.faces`` track.

Shape legend
  F frames   H, W frame size   R crop resolution (256 / 512)   P landmarks   h, w region of a frame being restored
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ["AlignTransforms", "align_crops", "align_chunks", "restore", "map_points", "three_points",
           "similarity_transforms",
           "similarity_from_points", "template", "landmarks_from_track", "MEDIAPIPE_POINTS", "INSIGHTFACE_POINTS",
           "GREY"]

# (image-left brow, image-right brow, nose) as landmark index groups; each group's mean is one alignment point
INSIGHTFACE_POINTS = ((43, 48, 49, 51, 50), (101, 102, 103, 104, 105), (74, 77, 83, 86))
# MediaPipe mesh: upper contour of the person's right brow (image left) and left brow, and nose bridge middle,
# tip and the two alar wings. Our choice of the mesh points nearest InsightFace's groups (not a published mapping).
MEDIAPIPE_POINTS = ((70, 63, 105, 66, 107), (300, 293, 334, 296, 336), (195, 1, 98, 327))
TEMPLATE = ((17.0, 20.0), (58.0, 20.0), (37.5, 40.0))  # template points at ratio 1 (reference: 19-2, 56+2, 45-5)
CROP_UNITS = (75.0, 100.0)  # crop width, height at ratio 1
SMOOTH_KEEP = 0.2  # weight of the previous frame's translation bias
GREY = 127.0 / 255.0  # the reference's fill value (127 of 255)
LIP_POINTS = (61, 291, 0, 17)  # MediaPipe mesh: outer lip corners (right, left), upper and lower lip middle


@dataclass(frozen=True)
class AlignTransforms:
    """matrices [F,2,3]: frame pixel -> crop pixel (crop R x R); valid [F] bool (frames with a face);
    resolution R; frame_size (H, W); bias: the smoothing state after the last frame (for the next chunk)."""

    matrices: torch.Tensor
    valid: torch.Tensor
    resolution: int
    frame_size: tuple[int, int]
    bias: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.matrices.shape[0])


def template(resolution: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(template points [3,2] float64 in crop pixels, crop size (H, W)) of the reference at ``resolution``."""
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    ratio = resolution / 256 * 2.8
    points = torch.tensor(TEMPLATE, dtype=torch.float64) * ratio
    return points, (int(CROP_UNITS[1] * ratio), int(CROP_UNITS[0] * ratio))


def three_points(landmarks: torch.Tensor, round_points: bool = False) -> torch.Tensor:
    """[F,P,2|3] landmarks (pixels) -> [F,3,2] float64 alignment points (brow, brow, nose); NaN rows stay NaN."""
    if landmarks.dim() != 3 or landmarks.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must be [frames, points, 2 or 3] in pixels, got {list(landmarks.shape)}")
    lm = landmarks[..., :2].double()
    count = lm.shape[1]
    if count == 3:
        points = lm
    else:
        groups = {106: INSIGHTFACE_POINTS, 468: MEDIAPIPE_POINTS, 478: MEDIAPIPE_POINTS}.get(count)
        if groups is None:
            raise ValueError(f"landmarks have {count} points; expected 478 / 468 (MediaPipe), 106 (InsightFace) or 3")
        points = torch.stack([lm[:, list(g)].mean(dim=1) for g in groups], dim=1)  # 3 x [F,2] -> [F,3,2]
    return points.round() if round_points else points


def _normalised(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre [2], std (over all coordinates, unbiased) [], points centred and divided by the std [3,2])."""
    centre = points.mean(dim=0)
    centred = points - centre
    std = centred.std()
    return centre, std, centred / std


def similarity_from_points(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M [2,3] float64 with dst ~ M [src; 1], nose bias [2]): the least-squares rotation of the normalised point
    sets (SVD, no reflection), scale std_dst / std_src, translation mapping the centres; the bias is the
    normalised third points' difference (what the reference smooths)."""
    c1, s1, n1 = _normalised(src.double())
    c2, s2, n2 = _normalised(dst.double())
    u, _, vh = torch.linalg.svd(n1.T @ n2)  # covariance [2,2] = U S V^T
    v = vh.T
    rot = v @ u.T
    if torch.det(rot) < 0:
        v = torch.cat([v[:, :1], -v[:, 1:]], dim=1)  # flip the last singular vector: a rotation, not a mirror
        rot = v @ u.T
    scale = s2 / s1
    shift = c2 - scale * (rot @ c1)
    return torch.cat([scale * rot, shift[:, None]], dim=1), n2[2] - n1[2]


def similarity_transforms(points: torch.Tensor, resolution: int, smooth: bool = True,
                          bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                        Optional[torch.Tensor]]:
    """Per frame points [F,3,2] -> (frame -> R x R crop matrices [F,2,3] float64, valid [F], last bias).

    The translation of frame t gets b_t = 0.2 b_{t-1} + 0.8 d_t (b_0 = d_0, or from ``bias``: the state a previous
    chunk returned); frames whose points are not finite get the identity and valid False and leave b unchanged."""
    tpl, (crop_h, crop_w) = template(resolution)
    resize = torch.tensor([[resolution / crop_w, 0.0, (resolution / crop_w - 1) / 2],
                           [0.0, resolution / crop_h, (resolution / crop_h - 1) / 2],
                           [0.0, 0.0, 1.0]], dtype=torch.float64)  # crop pixel -> R x R pixel (pixel centres)
    mats = torch.zeros(points.shape[0], 2, 3, dtype=torch.float64)
    mats[:, 0, 0] = mats[:, 1, 1] = 1.0
    valid = torch.isfinite(points).flatten(1).all(dim=1)
    for i in range(points.shape[0]):
        if not valid[i]:
            continue
        m, d = similarity_from_points(points[i], tpl)
        if smooth:
            bias = d if bias is None else SMOOTH_KEEP * bias + (1 - SMOOTH_KEEP) * d
            m[:, 2] += bias
        mats[i] = (resize @ torch.cat([m, m.new_tensor([[0.0, 0.0, 1.0]])]))[:2]  # [3,3] @ [3,3] -> first 2 rows
    return mats, valid, bias


def _warp(images: torch.Tensor, mats: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """kornia's bilinear affine warp: images [N,C,H,W], mats [N,2,3] (source pixel -> output pixel)."""
    from kornia.geometry.transform import warp_affine

    value = torch.full((images.shape[1],), fill, dtype=images.dtype, device=images.device)
    return warp_affine(images, mats.to(images), size, mode="bilinear", padding_mode="fill", fill_value=value)


def align_crops(frames: torch.Tensor, landmarks: torch.Tensor, size: int = 256, smooth: bool = True,
                round_points: bool = False, bias: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, AlignTransforms]:
    """frames [F,H,W,3] 0..1 and their landmarks [F,P,2|3] (pixels) -> (aligned crops [F,R,R,3], transforms).

    Frames without landmarks (NaN) give a grey crop and are passed through by :func:`restore`. ``bias``: the
    smoothing state of the previous chunk (``transforms.bias``) when a video is aligned chunk by chunk."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {list(frames.shape)}")
    if landmarks.shape[0] != frames.shape[0]:
        raise ValueError(f"{landmarks.shape[0]} landmark sets for {frames.shape[0]} frames")
    mats, valid, last = similarity_transforms(three_points(landmarks, round_points), size, smooth, bias)
    tf = AlignTransforms(mats, valid, size, (int(frames.shape[1]), int(frames.shape[2])), last)
    return warp_crops(frames, tf), tf


def warp_crops(frames: torch.Tensor, transforms: AlignTransforms) -> torch.Tensor:
    """frames [F,H,W,3] -> their aligned crops [F,R,R,3] by the given transforms (grey where a frame has no face)."""
    size = transforms.resolution
    crops = torch.full((frames.shape[0], size, size, 3), GREY, dtype=frames.dtype, device=frames.device)
    idx = transforms.valid.nonzero().flatten()
    if idx.numel():
        src = frames[idx].permute(0, 3, 1, 2)  # [n,H,W,3] -> [n,3,H,W]
        warped = _warp(src, transforms.matrices[idx].to(frames.device), (size, size), GREY)  # [n,3,R,R]
        crops[idx] = warped.permute(0, 2, 3, 1).clamp(0, 1)  # -> [n,R,R,3]
    return crops


def transforms_for(landmarks: torch.Tensor, resolution: int, frame_size: tuple[int, int],
                   smooth: bool = True) -> AlignTransforms:
    """The whole video's transforms from its landmarks [F,P,2|3] (pixels): the smoothing runs over every frame, as
    aligning the video in one go or chunk by chunk does."""
    mats, valid, last = similarity_transforms(three_points(landmarks), resolution, smooth)
    return AlignTransforms(mats, valid, resolution, (int(frame_size[0]), int(frame_size[1])), last)


def transforms_slice(transforms: AlignTransforms, start: int, stop: int) -> AlignTransforms:
    """The transforms of frames [start, stop)."""
    return AlignTransforms(transforms.matrices[start:stop], transforms.valid[start:stop], transforms.resolution,
                           transforms.frame_size)


def aligned_mouths(landmarks: torch.Tensor, transforms: AlignTransforms) -> tuple[torch.Tensor, torch.Tensor]:
    """(mouth centres [F,2] normalised in the aligned crop, valid [F]) from MediaPipe mesh landmarks [F,478|468,2|3]
    in pixels: the mean of the outer lips' corners and middle points (:data:`LIP_POINTS`)."""
    lips = landmarks[:, list(LIP_POINTS), :2].double()  # [F,4,2]
    crop = map_points(lips, transforms).mean(dim=1) / transforms.resolution  # [F,2] crop pixels -> 0..1
    valid = transforms.valid & torch.isfinite(crop).all(dim=1)
    return torch.where(valid[:, None], crop, torch.full_like(crop, 0.5)).float(), valid


def _min_filter(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Erosion of mask [1,1,h,w] by a k x k square anchored at k // 2 (cv2.erode / kornia's rule: outside
    pixels never erode)."""
    if k <= 1:
        return mask
    lo, hi = k // 2, k - 1 - k // 2
    x = F.pad(-mask, (lo, hi, lo, hi), value=-math.inf)  # min = -max(-x); outside counts as +inf
    x = F.max_pool2d(x, (k, 1), stride=1)  # rows
    return -F.max_pool2d(x, (1, k), stride=1)  # columns


def _gaussian(mask: torch.Tensor, k: int) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return gaussian_blur2d(mask, (k, k), (sigma, sigma))


def _region(inv: torch.Tensor, resolution: int, height: int, width: int, margin: int) -> tuple[int, int, int, int]:
    """Bounding rows / columns (y0, y1, x0, x1) of the crop's footprint in the frame, plus ``margin``, clipped."""
    r = resolution - 0.5
    corners = torch.tensor([[-0.5, -0.5, 1.0], [r, -0.5, 1.0], [-0.5, r, 1.0], [r, r, 1.0]], dtype=torch.float64)
    xy = corners @ inv.T  # [4,3] @ [3,2] -> [4,2] frame pixels
    x0 = max(0, int(math.floor(float(xy[:, 0].min()))) - margin)
    x1 = min(width, int(math.ceil(float(xy[:, 0].max()))) + margin + 1)
    y0 = max(0, int(math.floor(float(xy[:, 1].min()))) - margin)
    y1 = min(height, int(math.ceil(float(xy[:, 1].max()))) + margin + 1)
    return y0, y1, x0, x1


def _invert(mat: torch.Tensor) -> torch.Tensor:
    full = torch.cat([mat, mat.new_tensor([[0.0, 0.0, 1.0]])])
    return torch.linalg.inv(full)[:2]


def _soft_mask(inv_roi: torch.Tensor, resolution: int, size: tuple[int, int], device) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """(hard mask eroded 2 x 2, soft mask) [1,1,h,w] of the crop's footprint in a frame region."""
    ones = torch.ones(1, 1, resolution, resolution, dtype=torch.float32, device=device)
    hard = _min_filter(_warp(ones, inv_roi[None], size, 0.0), 2)
    edge = int(float(hard.sum()) ** 0.5) // 20
    soft = _min_filter(hard, 2 * edge)
    if edge > 0:
        soft = _gaussian(soft, 2 * edge + 1)
    return hard, soft


def restore(frames: torch.Tensor, synced: torch.Tensor, transforms: AlignTransforms) -> torch.Tensor:
    """Paste the synced crops [F,R,R,3] back into frames [F,H,W,3] (0..1) by the inverse warp with LatentSync's
    eroded, blurred mask; frames without a face and every pixel where the soft mask is 0 are returned bit-exact."""
    n, height, width = frames.shape[:3]
    res = transforms.resolution
    if synced.shape[0] != n or tuple(synced.shape[1:]) != (res, res, 3) or len(transforms) != n:
        raise ValueError(f"synced crops {list(synced.shape)} and {len(transforms)} transforms do not match "
                         f"{n} frames at resolution {res}")
    if (height, width) != transforms.frame_size:
        raise ValueError(f"frames are {height}x{width}; the transforms were made for {transforms.frame_size}")
    out = frames.clone()
    for i in transforms.valid.nonzero().flatten().tolist():
        inv = _invert(transforms.matrices[i])  # crop pixel -> frame pixel
        face_px = float(abs(torch.det(inv[:, :2]))) * res * res
        margin = 2 * (int(face_px ** 0.5) // 20) + 4  # covers the blur's reach beyond the footprint
        y0, y1, x0, x1 = _region(inv, res, height, width, margin)
        if y1 <= y0 or x1 <= x0:
            continue  # the face lies outside the frame
        shift = torch.tensor([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        inv_roi = (shift @ torch.cat([inv, inv.new_tensor([[0.0, 0.0, 1.0]])]))[:2]  # crop -> region pixel
        size = (y1 - y0, x1 - x0)
        hard, soft = _soft_mask(inv_roi, res, size, frames.device)
        face = _warp(synced[i].permute(2, 0, 1)[None].float(), inv_roi[None], size, GREY)  # [1,3,h,w]
        region = frames[i, y0:y1, x0:x1].permute(2, 0, 1)[None].float()  # [h,w,3] -> [1,3,h,w]
        blended = (soft * (hard * face) + (1 - soft) * region)[0].permute(1, 2, 0)  # [1,3,h,w] -> [h,w,3]
        inside = (soft[0, 0] > 0)[..., None]  # [h,w,1]: the restored region
        out[i, y0:y1, x0:x1] = torch.where(inside, blended.to(frames.dtype), frames[i, y0:y1, x0:x1])
    return out


def align_chunks(chunks: Iterable[torch.Tensor], landmarks: torch.Tensor, size: int = 256, smooth: bool = True
                 ) -> Iterator[tuple[torch.Tensor, AlignTransforms]]:
    """:func:`align_crops` over a stream of frame chunks [n,H,W,3] with the whole video's landmarks [F,P,2|3],
    the translation smoothing carried across chunks (the result equals aligning the whole video at once)."""
    start, bias = 0, None
    for chunk in chunks:
        crops, tf = align_crops(chunk, landmarks[start:start + chunk.shape[0]], size, smooth, bias=bias)
        start, bias = start + chunk.shape[0], tf.bias
        yield crops, tf


def map_points(points: torch.Tensor, transforms: AlignTransforms) -> torch.Tensor:
    """Frame pixel points [F,P,2] -> crop pixel points [F,P,2] (e.g. the lip landmarks, for the mouth centre the
    pipeline's DS-CFG map needs: divide by the resolution for the normalised centre)."""
    m = transforms.matrices.to(points.device)  # [F,2,3]
    return points[..., :2].double() @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]  # [F,P,2] @ [F,2,2] + [F,1,2]


def landmarks_from_track(track) -> torch.Tensor:
    """Pixel landmarks [F,478,2] from an ``omnisync_model.faces.FaceTrack`` (normalised with pixel centres at
    i + 0.5; NaN where the mesh found nothing). ValueError when the track kept no landmarks."""
    if track.landmarks is None:
        raise ValueError("the face track holds no landmarks (track with keep_landmarks=True)")
    height, width = track.size
    lm = track.landmarks[..., :2].double()
    return torch.stack([lm[..., 0] * width - 0.5, lm[..., 1] * height - 0.5], dim=-1)  # normalised -> pixels
