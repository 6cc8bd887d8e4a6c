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
  order (lips, right eye, left eye) and head order (lips, right eye, right iris, left eye, left iris). The three
  crop matrices are computed in one batch and the refinement below is one gather (:func:`refine_index`).
- Refinement into 478 points: lips and eye contours replace x, y of their mesh points (z kept); the iris points
  become 468..472 (right) and 473..477 (left) with z = the mean z of the first 16 points of that eye's contour.

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
import torch.nn.functional as F

from .layers import BlazeBlock, SameConv, block_stack
from .mesh_ops import crop_features, map_landmarks, region_matrices
from .topology import EYE_AVERAGE, LEFT_EYE, LEFT_IRIS, LIPS, NUM_LANDMARKS, RIGHT_EYE, RIGHT_IRIS


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


REFINED = (("lips", LIPS), ("right_eye", RIGHT_EYE), ("left_eye", LEFT_EYE), ("right_iris", RIGHT_IRIS),
           ("left_iris", LEFT_IRIS))  # head outputs -> the landmarks whose x, y they replace, in refinement order
IRIS_DEPTH = (("right_iris", RIGHT_EYE), ("left_iris", LEFT_EYE))  # iris z: mean z of its eye's first points


def refine_index(config: "FaceMeshConfig") -> list[int]:
    """The refinement as one gather: index into [mesh (N*3) | head points (H*P*2, heads in :func:`head_names` order,
    P the largest head) | iris depths (2, :data:`IRIS_DEPTH` order)] of each value of the refined [N+10, 3]."""
    heads = [output_key(r, h) for r, h, _ in head_names(config)]
    width = max(p for _, _, p in head_names(config))
    start = config.num_mesh * 3
    index = list(range(start)) + [-1] * (NUM_LANDMARKS * 3 - start)  # mesh points as they are
    for key, points in REFINED:
        for j, point in enumerate(points):
            for k in (0, 1):
                index[point * 3 + k] = start + (heads.index(key) * width + j) * 2 + k
    for d, (key, _) in enumerate(IRIS_DEPTH):
        for point in dict(REFINED)[key]:
            index[point * 3 + 2] = start + len(heads) * width * 2 + d
    if -1 in index:
        raise ValueError(f"the refinement leaves landmark {index.index(-1) // 3} unset")
    return index


class _Regions(nn.Module):
    """All attention regions at once: the R crop matrices in one batch, the R trunks as channel groups, then the H
    heads (a trunk feeds each of its region's heads) as channel groups, then the output convolution of each head.

    [B,32,48,48] features and the coarse mesh [B,468,3] (feature pixels) -> (head points [B,H,P,2] in crop units,
    P the largest head's count; a head of fewer points fills the first rows), crop matrices [B,R,2,3])."""

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
        self.points = max(p for _, _, p in heads)
        names = [x.name for x in c.regions]
        width = max(len(x.subset) for x in c.regions)
        # index tensors as buffers, not tensors made in forward: a trace would keep those as constants for good
        self.register_buffer("source", torch.tensor([names.index(rn) for rn, _, _ in heads], device=device),
                             persistent=False)  # trunk feeding each head: [H]
        self.register_buffer("subsets", torch.tensor([x.subset + x.subset[:1] * (width - len(x.subset))
                                                      for x in c.regions], device=device),
                             persistent=False)  # [R,L], short regions padded with a repeated point
        self.register_buffer("ends", torch.tensor([[x.left, x.right] for x in c.regions], device=device),
                             persistent=False)  # [R,2]

    def forward(self, features: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        b, ch = features.shape[:2]
        size = (c.crop, c.crop)
        mats = region_matrices(coarse, self.subsets, self.ends, size, (c.crop_scale, c.crop_scale))  # [B,R,2,3]
        nr, nh = mats.shape[1], self.source.shape[0]
        crops = crop_features(features, mats, size).view(b, nr * ch, *size)  # [B,R,C,o,o] -> [B,R*C,o,o]
        t = self.trunk(crops)  # [B,R*128,4,4]
        t = t.view(b, nr, -1, *t.shape[2:])  # [B,R,128,4,4]
        x = t.index_select(1, self.source).flatten(1, 2)  # each head's trunk: [B,H,128,4,4] -> [B,H*128,4,4]
        x = self.head_neck(self.head_blocks(x))  # [B,H*32,2,2]
        return self._outputs(x, nh).view(b, nh, self.points, 2), mats  # [B,H*2P] -> [B,H,P,2]

    def _outputs(self, x: torch.Tensor, nh: int) -> torch.Tensor:
        """Each head's output convolution, its 2 x points values padded to 2P: [B,H*32,2,2] -> [B,H*2P]."""
        width = 2 * self.points
        convs = list(self.out.values())
        if torch.jit.is_tracing():  # one grouped convolution of the zero-padded kernels (constants once frozen)
            weight = torch.cat([F.pad(v.weight, (0, 0, 0, 0, 0, 0, 0, width - v.out_channels)) for v in convs])
            bias = torch.cat([F.pad(v.bias, (0, width - v.out_channels)) for v in convs])  # [H*2P]
            return F.conv2d(x, weight, bias, groups=nh).flatten(1)  # [B,H*2P,1,1] -> [B,H*2P]
        x = x.view(x.shape[0], nh, -1, *x.shape[2:])  # [B,H*32,2,2] -> [B,H,32,2,2]
        return torch.cat([F.pad(conv(x[:, i]).flatten(1), (0, width - conv.out_channels))  # [B,2p] -> [B,2P]
                          for i, conv in enumerate(convs)], 1)


class FaceMesh(nn.Module):
    """[B,3,192,192] in 0..1 -> dict of MediaPipe's raw outputs: ``mesh`` [B,468,3], ``presence`` logit [B], and per
    region head ``lips`` [B,80,2], ``right_eye`` / ``left_eye`` [B,71,2], ``right_iris`` / ``left_iris`` [B,5,2]
    (all in 192-pixel units); and ``landmarks`` [B,478,3], their refinement (as :func:`refine`, one gather)."""

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
        self._heads = [(output_key(r, h), p) for r, h, p in head_names(c)]
        self.register_buffer("refine_index", torch.tensor(refine_index(c), device=device), persistent=False)  # [478*3]
        self.register_buffer("iris_depth", torch.tensor([eye[:EYE_AVERAGE] for _, eye in IRIS_DEPTH], device=device),
                             persistent=False)  # [2,16] eye points whose mean z each iris takes

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
        m = mats.index_select(1, self.regions.source)  # each head's region: [B,H,2,3]
        mapped = map_landmarks(points, m, 1.0 / c.feature_scale)  # translation to 192 pixels: [B,H,P,2]
        for i, (key, p) in enumerate(self._heads):
            out[key] = mapped[:, i, :p]  # [B,p,2]
        depth = mesh[..., 2].index_select(1, self.iris_depth.flatten()).view(b, 2, -1).mean(2)  # [B,2*16] -> [B,2]
        parts = (mesh.flatten(1), mapped.flatten(1), depth)
        values = mesh.new_empty(b, sum(v.shape[1] for v in parts))  # [B,N*3 + H*P*2 + 2]
        start = 0
        for v in parts:  # filled slice by slice: oneDNN Graph would run a concatenation as a costly partition
            values[:, start:start + v.shape[1]] = v
            start += v.shape[1]
        out["landmarks"] = values.index_select(1, self.refine_index).view(b, -1, 3)  # refined: [B,478,3]
        return out


def refine(raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """MediaPipe's landmark refinement of the raw outputs -> [B,478,3] (192-pixel units); the plain form of the
    network's ``landmarks`` output."""
    mesh = raw["mesh"].float()
    b = mesh.shape[0]
    out = torch.cat([mesh, mesh.new_zeros(b, NUM_LANDMARKS - mesh.shape[1], 3)], 1)  # [B,478,3]
    for key, index in REFINED:
        out[:, list(index), :2] = raw[key].float()
    for key, eye in IRIS_DEPTH:
        z = mesh[:, list(eye[:EYE_AVERAGE]), 2].mean(1, keepdim=True)  # [B,1]
        out[:, list(dict(REFINED)[key]), 2] = z
    return out
