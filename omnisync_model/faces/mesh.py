"""MediaPipe's face mesh with attention (478 landmarks: 468 mesh points + 10 iris points) in PyTorch.

Facts (from ``face_landmark_with_attention.tflite`` in the mediapipe 0.10.21 wheel, and MediaPipe's
``face_landmark_cpu.pbtxt`` / ``tensors_to_face_landmarks_with_attention.pbtxt`` graphs):

- Input: a 192x192 RGB crop (the rotated face ROI), values 0..1.
- Backbone: 3x3 stride-2 stem (16 channels, PReLU) and 17 BlazeBlocks (PReLU) down to 3x3x128, a 1x1 reduction to
  32 channels (PReLU) and one more block; two 3x3 valid heads: the mesh (468 x (x, y, z), in 192-pixel units) and
  the face presence logit.
- Attention regions (lips, right eye, left eye): from the coarse mesh (scaled by 1/4 to the 48x48 map of backbone
  block 2), each region's landmarks give a crop matrix (see :mod:`.mesh_ops`); the 48x48x32 features are sampled
  into a 16x16 crop; a trunk of 6 blocks (to 4x4x128) feeds one head per output (lips: 80 points; each eye: 71
  contour points and 5 iris points): 5 blocks, a 1x1 reduction to 32 (PReLU), a block and a 2x2 valid convolution.
  Head points are mapped back with the crop matrix (translation x4: 48 -> 192 pixels). The 3 trunks and the 5
  heads each run as one grouped network (same maths, a fifth of the ops); their weights are stacked in region
  order (lips, right eye, left eye) and head order (lips, right eye, right iris, left eye, left iris).
- Refinement into 478 points: lips and eye contours replace x, y of their mesh points (z kept); the iris points
  become 468..472 (left) and 473..477 (right) with z = the mean z of the first 16 points of that eye's contour.

"Left" is the person's left eye (points 263/362, image right when facing the camera), as in MediaPipe's
``face_mesh_connections.py``; the model file names its tensors from the viewer's side (``conv_left_eye`` refines
the point-33 eye, which is our ``right_eye``).

Shape legend
  B  batch      N  landmarks      C  channels      H, W  spatial size
  landmarks are (x, y, z) in pixels of the 192x192 input (z in the same unit, relative to the face centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import BlazeBlock, SameConv, block_stack
from .mesh_ops import crop_features, map_landmarks, region_matrix
from .topology import EYE_AVERAGE, LEFT_EYE, LEFT_IRIS, LIPS, RIGHT_EYE, RIGHT_IRIS


def _widen(c_in: int, c_out: int, repeats: int) -> list[tuple[int, int, int]]:
    """A stride-2 widening block followed by ``repeats`` plain blocks."""
    return [(c_in, c_out, 2)] + [(c_out, c_out, 1)] * repeats


@dataclass(frozen=True)
class RegionSpec:
    name: str
    subset: tuple[int, ...]  # mesh points that define the crop (and that the heads refine)
    left: int  # rotation from point ``left`` to point ``right``
    right: int
    heads: tuple[tuple[str, int], ...]  # (head name, number of (x, y) points)


@dataclass(frozen=True)
class FaceMeshConfig:
    input_size: int = 192
    stem_channels: int = 16
    backbone: tuple[tuple[int, int, int], ...] = tuple(
        [(16, 16, 1)] * 2 + _widen(16, 32, 2) + _widen(32, 64, 2) + _widen(64, 128, 2) + _widen(128, 128, 2)
        + _widen(128, 128, 2))
    feature_tap: int = 2  # backbone block whose 48x48x32 output the regions crop
    neck_channels: int = 32
    num_mesh: int = 468
    feature_scale: float = 0.25  # mesh pixels -> feature-map pixels
    crop: int = 16
    crop_scale: float = 1.5
    trunk: tuple[tuple[int, int, int], ...] = tuple([(32, 32, 1)] * 2 + _widen(32, 64, 2) + [(64, 128, 2)])
    head: tuple[tuple[int, int, int], ...] = tuple([(128, 128, 1)] * 2 + _widen(128, 128, 2))
    regions: tuple[RegionSpec, ...] = (
        RegionSpec("lips", LIPS, 61, 291, (("lips", 80),)),
        RegionSpec("right_eye", RIGHT_EYE, 33, 133, (("contour", 71), ("iris", 5))),
        RegionSpec("left_eye", LEFT_EYE, 362, 263, (("contour", 71), ("iris", 5))),
    )


PRESETS = {"attention_478": FaceMeshConfig()}


def get_preset(name: str) -> FaceMeshConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown face mesh preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


class _Neck(nn.Module):
    """1x1 reduction (PReLU) then one block, per group: [B,G*Ci,H,W] -> [B,G*Co,H,W]."""

    def __init__(self, cin: int, cout: int, device=None, dtype=None, operations=nn, groups: int = 1):
        super().__init__()
        self.reduce = SameConv(groups * cin, groups * cout, 1, padding="valid", activation="prelu", groups=groups,
                               device=device, dtype=dtype, operations=operations)
        self.block = BlazeBlock(cout, cout, 1, "prelu", device, dtype, operations, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.reduce(x))


def head_names(config: "FaceMeshConfig") -> list[tuple[str, str, int]]:
    """(region, head, points) of every region head, in the order the grouped head network stacks them."""
    return [(r.name, h, p) for r in config.regions for h, p in r.heads]


def output_key(region: str, head: str) -> str:
    """Raw output name of a head: ``lips``, ``right_eye``, ``right_iris``, ``left_eye``, ``left_iris``."""
    return region if head in ("lips", "contour") else region.replace("eye", "iris")


class _Regions(nn.Module):
    """All attention regions at once: the R trunks run as channel groups, then the H heads (a trunk feeds each of
    its region's heads) as channel groups, then one output convolution per head.

    [B,32,48,48] features and the coarse mesh [B,468,3] (feature pixels) -> ({output key: [B,P,2]} in crop units,
    crop matrices [B,R,2,3])."""

    def __init__(self, c: "FaceMeshConfig", device=None, dtype=None, operations=nn):
        super().__init__()
        self.config = c
        heads = head_names(c)
        r, h = len(c.regions), len(heads)
        self.trunk = block_stack(c.trunk, "prelu", device, dtype, operations, groups=r)
        self.head_blocks = block_stack(c.head, "prelu", device, dtype, operations, groups=h)
        self.head_neck = _Neck(c.head[-1][1], c.neck_channels, device, dtype, operations, groups=h)
        self.out = nn.ModuleDict({output_key(rn, hn): operations.Conv2d(c.neck_channels, p * 2, 2, device=device,
                                                                        dtype=dtype) for rn, hn, p in heads})
        names = [x.name for x in c.regions]
        # index tensors as buffers, not tensors made in forward: a trace would keep those as constants for good
        self.register_buffer("source", torch.tensor([names.index(rn) for rn, _, _ in heads], device=device),
                             persistent=False)  # trunk feeding each head: [H]
        for i, region in enumerate(c.regions):
            self.register_buffer(f"subset_{i}", torch.tensor(region.subset, device=device), persistent=False)  # [n]

    def forward(self, features: torch.Tensor, coarse: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        c = self.config
        b, ch = features.shape[:2]
        size = (c.crop, c.crop)
        scale = (c.crop_scale, c.crop_scale)
        mats = torch.stack([region_matrix(coarse, getattr(self, f"subset_{i}"), r.left, r.right, size, scale)
                            for i, r in enumerate(c.regions)], 1)  # [B,R,2,3]
        nr = mats.shape[1]
        crops = crop_features(features, mats, size)  # [B,C,R,o,o]
        crops = crops.transpose(1, 2).reshape(b, nr * ch, *size)  # [B,C,R,o,o] -> [B,R,C,o,o] -> [B,R*C,o,o]
        t = self.trunk(crops)  # [B,R*128,4,4]
        t = t.view(b, nr, -1, *t.shape[2:])  # [B,R,128,4,4]
        x = t.index_select(1, self.source).flatten(1, 2)  # each head's trunk: [B,H,128,4,4] -> [B,H*128,4,4]
        x = self.head_neck(self.head_blocks(x))  # [B,H*32,2,2]
        x = x.view(b, len(self.source), -1, *x.shape[2:])  # [B,H,32,2,2]
        out = {key: conv(x[:, i]).view(b, -1, 2) for i, (key, conv) in enumerate(self.out.items())}  # [B,2P] -> [B,P,2]
        return out, mats


class FaceMesh(nn.Module):
    """[B,3,192,192] in 0..1 -> dict of MediaPipe's raw outputs: ``mesh`` [B,468,3], ``presence`` logit [B], and per
    region head ``lips`` [B,80,2], ``right_eye`` / ``left_eye`` [B,71,2], ``right_iris`` / ``left_iris`` [B,5,2]
    (all in 192-pixel units)."""

    def __init__(self, config: FaceMeshConfig = FaceMeshConfig(), device=None, dtype=None, operations=nn):
        super().__init__()
        c = self.config = config
        self.stem = SameConv(3, c.stem_channels, 3, 2, activation="prelu", device=device, dtype=dtype,
                             operations=operations)
        self.backbone = block_stack(c.backbone, "prelu", device, dtype, operations)
        self.neck = _Neck(c.backbone[-1][1], c.neck_channels, device, dtype, operations)
        self.mesh_head = operations.Conv2d(c.neck_channels, c.num_mesh * 3, 3, device=device, dtype=dtype)
        self.presence_head = operations.Conv2d(c.neck_channels, 1, 3, device=device, dtype=dtype)
        self.regions = _Regions(c, device, dtype, operations)
        self._heads = head_names(c)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        x = self.stem(x)
        features = None
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i == c.feature_tap:
                features = x  # [B,32,48,48]
        x = self.neck(x)  # [B,32,3,3]
        b = x.shape[0]
        mesh = self.mesh_head(x).view(b, c.num_mesh, 3)  # [B,1404,1,1] -> [B,468,3]
        out = {"mesh": mesh, "presence": self.presence_head(x).view(b)}  # [B,1,1,1] -> [B]
        points, mats = self.regions(features, mesh * c.feature_scale)  # coarse mesh in 48x48 feature pixels
        back = 1.0 / c.feature_scale
        names = [r.name for r in c.regions]
        for region, head, _ in self._heads:
            m = mats[:, names.index(region)]
            m192 = torch.cat([m[:, :, :2], m[:, :, 2:] * back], 2)  # translation to 192 pixels: [B,2,3]
            key = output_key(region, head)
            out[key] = map_landmarks(points[key], m192)
        return out


def refine(raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """MediaPipe's landmark refinement of the raw outputs -> [B,478,3] (192-pixel units)."""
    mesh = raw["mesh"].float()
    b = mesh.shape[0]
    out = torch.cat([mesh, mesh.new_zeros(b, 10, 3)], 1)  # [B,478,3]
    for key, index in (("lips", LIPS), ("right_eye", RIGHT_EYE), ("left_eye", LEFT_EYE)):
        out[:, list(index), :2] = raw[key].float()
    for key, index, eye in (("right_iris", RIGHT_IRIS, RIGHT_EYE), ("left_iris", LEFT_IRIS, LEFT_EYE)):
        out[:, list(index), :2] = raw[key].float()
        z = out[:, list(eye[:EYE_AVERAGE]), 2].mean(1, keepdim=True)  # [B,1]
        out[:, list(index), 2] = z.expand(-1, len(index))
    return out
