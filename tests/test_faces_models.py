"""Parity of the PyTorch face detector and face mesh with MediaPipe's TFLite models, against committed goldens.

tests/golden/faces holds small inputs and the reference runtimes' outputs (made once outside the repo):
- detector.npz: three letterboxed 128x128 inputs (MediaPipe's own ImageToTensor output, 8-bit), the raw outputs
  of ai-edge-litert 2.3.0 running face_detection_short_range.tflite, and MediaPipe's decoded detections;
- mesh.npz: four 192x192 face crops (MediaPipe's crops from its detection ROI), the raw outputs of
  face_landmark_with_attention.tflite run by the mediapipe 0.10.21 wheel's runtime (with its custom ops), and the
  478 refined landmarks of MediaPipe's FaceLandmarkCpu graph on the same crops;
- frames.npz: four consecutive frames of the real clip (face region, 224x224) and two synthetic frames, with
  MediaPipe's FaceLandmarkFrontCpu results (detection, ROI, landmarks; static and tracking mode).
Tolerance of the task: 0.5 px at the model's input size; the measured errors are far below, asserted tighter.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.faces import roi as R
from omnisync_model.faces.detector import BlazeFaceConfig, decode, ssd_anchors, weighted_nms
from omnisync_model.faces.landmarker import FaceLandmarker, FrameError, as_frame
from omnisync_model.faces.layers import BlazeBlock, pad_same
from omnisync_model.faces.mesh import refine
from omnisync_model.faces.mesh_ops import crop_features, map_landmarks, region_matrix
from omnisync_model.faces.tracker import TrackOptions, face_track
from omnisync_model.faces.weights import DETECTOR_PATH, MESH_PATH, infer_config, load_detector, load_mesh

GOLDEN = Path(__file__).resolve().parent / "golden" / "faces"
RAW_KEYS = ("mesh", "lips", "right_eye", "left_eye", "right_iris", "left_iris")


@pytest.fixture(scope="module")
def landmarker():
    torch.set_num_threads(2)
    return FaceLandmarker()


def _golden(name):
    return dict(np.load(GOLDEN / f"{name}.npz"))


def test_detector_raw_matches_litert(landmarker):
    g = _golden("detector")
    x = torch.from_numpy(g["det_input"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [3,128,128,3] -> [3,3,128,128]
    with torch.no_grad():
        boxes, scores = landmarker.detector(x)
    ref_b, ref_s = torch.from_numpy(g["det_raw_boxes"]), torch.from_numpy(g["det_raw_scores"])
    assert boxes.shape == ref_b.shape == (3, 896, 16) and scores.shape == ref_s.shape == (3, 896, 1)
    assert (boxes - ref_b).abs().max() < 1e-2  # regressors in 128-pixel units (values up to ~200); measured 1.5e-3
    assert (scores - ref_s).abs().max() < 2e-2  # logits (-100 .. +30); measured 3e-3


def test_detector_decoding_matches_mediapipe(landmarker):
    g = _golden("detector")
    x = torch.from_numpy(g["det_input"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        box, kps, score = decode(*landmarker.detector(x), ssd_anchors(), BlazeFaceConfig())
    for i in range(3):
        d = weighted_nms(box[i], kps[i], score[i])
        assert len(d) >= 1
        assert (d.boxes[0] - torch.from_numpy(g["det_mp_boxes"][i])).abs().max() < 2e-5  # 0.0026 px at 128
        assert (d.keypoints[0] - torch.from_numpy(g["det_mp_keypoints"][i])).abs().max() < 2e-5
        assert abs(float(d.scores[0]) - float(g["det_mp_scores"][i])) < 1e-5


def test_anchor_layout():
    a = ssd_anchors()
    assert a.shape == (896, 2)
    assert torch.allclose(a[0], torch.tensor([0.5 / 16, 0.5 / 16])) and torch.equal(a[0], a[1])  # 2 per 16x16 cell
    assert torch.allclose(a[2], torch.tensor([1.5 / 16, 0.5 / 16]))
    assert torch.allclose(a[512], torch.tensor([0.5 / 8, 0.5 / 8])) and torch.equal(a[512], a[517])  # 6 per 8x8 cell
    assert torch.allclose(a[-1], torch.tensor([7.5 / 8, 7.5 / 8]))


def test_weighted_nms_averages_clusters():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    kps = box[:, None, :2].repeat(1, 6, 1)
    score = torch.tensor([0.9, 0.6, 0.7, 0.3])  # the last is below the 0.5 threshold
    d = weighted_nms(box, kps, score)
    assert len(d) == 2 and torch.allclose(d.scores, torch.tensor([0.9, 0.7]))
    mean = (0.9 * box[0] + 0.6 * box[1]) / 1.5  # IoU of boxes 0 and 1 is 0.82 > 0.3: one cluster
    assert torch.allclose(d.boxes[0], mean) and torch.allclose(d.boxes[1], box[2])
    assert torch.allclose(d.keypoints[0, 0], mean[:2])


def test_mesh_raw_matches_mediapipe_runtime(landmarker):
    g = _golden("mesh")
    x = torch.from_numpy(g["mesh_input"]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        out = landmarker.mesh(x)
    for key in RAW_KEYS:
        ref = torch.from_numpy(g[f"mesh_raw_{key}"]).view(out[key].shape)
        assert (out[key] - ref).abs().max() < 2e-3, key  # 192-pixel units; measured ~1.5e-4
    assert (out["presence"] - torch.from_numpy(g["mesh_raw_presence"])[:, 0]).abs().max() < 1e-3
    refined = refine(out)
    assert refined.shape == (4, 478, 3)
    assert (refined - torch.from_numpy(g["mesh_refined"])).abs().max() < 2e-3


def test_refinement_follows_mediapipe():
    g = _golden("mesh")
    raw = {k: torch.from_numpy(g[f"mesh_raw_{k}"]).view(4, -1, 3 if k == "mesh" else 2) for k in RAW_KEYS}
    assert (refine(raw) - torch.from_numpy(g["mesh_refined"])).abs().max() < 1e-3


def _static(landmarker, frame):
    det = landmarker.detect([frame])[0]
    rois = R.rois_from_detections(det.boxes[:1], det.keypoints[:1])
    lm, presence = landmarker.landmarks(frame, rois)
    return det, rois, lm, presence


@pytest.mark.parametrize("kind", ["real", "syn"])
def test_whole_frame_pipeline_matches_mediapipe(landmarker, kind):
    g = _golden("frames")
    frames = g[f"{kind}_frames"]
    for i in range(len(frames)):
        h, w = frames[i].shape[:2]
        wh = torch.tensor([w, h], dtype=torch.float32)
        det, rois, lm, presence = _static(landmarker, frames[i])
        b = torch.from_numpy(g[f"{kind}_det_box"][i])
        ref_box = torch.cat([b[:2], b[:2] + b[2:]]) * wh.repeat(2)
        assert (det.boxes[0] - ref_box).abs().max() < 1e-2  # frame pixels
        assert (det.keypoints[0] - torch.from_numpy(g[f"{kind}_det_kp"][i]) * wh).abs().max() < 1e-2
        r = torch.from_numpy(g[f"{kind}_det_roi"][i])
        assert (rois[0] - torch.cat([r[:2] * wh, r[2:4] * wh, r[4:]])).abs().max() < 1e-2
        assert presence[0] > 0.5
        err = (lm[0, :, :2] - torch.from_numpy(g[f"{kind}_static_landmarks"][i][:, :2]) * wh).norm(dim=1)
        assert float(err.max()) * 192 / float(rois[0, 2]) < 0.05  # px at the mesh input (task: 0.5); measured 0.006


def test_tracking_matches_mediapipe_tracking_mode(landmarker):
    g = _golden("frames")
    frames = g["real_frames"]
    track = face_track(frames, 25.0, TrackOptions(smooth=False, locator=False), landmarker=landmarker)
    assert track.source == ("mesh",) * 4 and track.detections == 1
    h, w = frames.shape[1:3]
    wh = torch.tensor([w, h], dtype=torch.float32)
    ours = track.landmarks[..., :2] * wh - 0.5  # pack convention -> MediaPipe's pixel centres
    err = (ours - torch.from_numpy(g["real_track_landmarks"][..., :2]) * wh).norm(dim=-1)  # [4,478]
    side = torch.from_numpy(g["real_track_roi"][:, 2]) * w
    side = torch.cat([torch.from_numpy(g["real_det_roi"][:1, 2]) * w, side[:-1]])  # ROI each frame was read from
    assert float((err.amax(1) * 192 / side).max()) < 0.1


def test_pad_same_is_tflite_same():
    x = torch.ones(1, 1, 6, 7)
    assert pad_same(x, 3, 2).shape == (1, 1, 7, 9)  # H: total 1 -> (0, 1); W: total 2 -> (1, 1)
    y = pad_same(x, 3, 2)
    assert y[0, 0, -1].sum() == 0 and y[0, 0, 0].sum() == 7  # the extra row goes at the bottom
    assert pad_same(torch.ones(1, 1, 128, 128), 5, 2).shape == (1, 1, 131, 131)  # total 3 -> (1, 2)


def test_grouped_blocks_equal_separate_blocks():
    torch.manual_seed(0)
    parts = [BlazeBlock(8, 12, 2, "prelu") for _ in range(3)]
    grouped = BlazeBlock(8, 12, 2, "prelu", groups=3)
    with torch.no_grad():
        for name, p in grouped.named_parameters():
            p.copy_(torch.cat([dict(b.named_parameters())[name] for b in parts], 0))
        x = torch.randn(2, 24, 8, 8)
        want = torch.cat([b(x[:, 8 * i:8 * i + 8]) for i, b in enumerate(parts)], 1)
        assert torch.allclose(grouped(x), want, atol=1e-6)


def _crop_reference(feat: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """MediaPipe's TransformTensorBilinear v2 written as its loops (one image, [C,H,W])."""
    c, h, w = feat.shape
    out = torch.zeros(c, n, n, dtype=torch.float64)
    f = feat.double()

    def get(yy, xx):
        return f[:, yy, xx] if (0 <= yy < h and 0 <= xx < w) else torch.zeros(c, dtype=torch.float64)

    for v in range(n):
        for u in range(n):
            x = float(m[0, 0] * (u + 0.5) + m[0, 1] * (v + 0.5) + m[0, 2] - 0.5)
            y = float(m[1, 0] * (u + 0.5) + m[1, 1] * (v + 0.5) + m[1, 2] - 0.5)
            if x < 0 or x > w - 1 or y < 0 or y > h - 1:
                continue
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            ax, ay = x - x0, y - y0
            top = (1 - ax) * get(y0, x0) + ax * get(y0, x0 + 1)
            bottom = (1 - ax) * get(y0 + 1, x0) + ax * get(y0 + 1, x0 + 1)
            out[:, v, u] = (1 - ay) * top + ay * bottom
    return out


def test_region_crop_matches_kernel_semantics():
    torch.manual_seed(1)
    feat = torch.randn(1, 4, 12, 12)
    lm = torch.rand(1, 20, 3) * 12
    m = region_matrix(lm, torch.arange(10), 0, 5, (6, 6), (1.5, 1.5))
    m = m + torch.tensor([[[0.0, 0.0, 3.0], [0.0, 0.0, -2.0]]])  # push part of the crop out of the map
    got = crop_features(feat, m, (6, 6))[0].double()
    assert torch.allclose(got, _crop_reference(feat[0], m[0], 6), atol=1e-5)
    pts = torch.tensor([[[1.0, 2.0]]])
    assert torch.allclose(map_landmarks(pts, m), (m[0, :, :2] @ pts[0, 0] + m[0, :, 2])[None, None])
    shifted = m + torch.tensor([[[0.1, 0.0, -4.0], [0.0, -0.2, 1.0]]])
    stacked = crop_features(feat, torch.stack([m, shifted], 1), (6, 6))  # [1,2,2,3] -> [1,2,C,6,6] in one call
    assert stacked.shape == (1, 2, 4, 6, 6)
    assert torch.equal(stacked[:, 0], crop_features(feat, m, (6, 6)))
    assert torch.equal(stacked[:, 1], crop_features(feat, shifted, (6, 6)))
    two = torch.cat([feat, feat.flip(2)])  # a batch of maps, each with its own crops
    both = crop_features(two, torch.stack([torch.stack([m, shifted], 1)[0], torch.stack([shifted, m], 1)[0]]), (6, 6))
    assert torch.equal(both[1, 0], crop_features(feat.flip(2), shifted, (6, 6))[0])
    assert torch.equal(both[0], stacked[0])


def test_region_matrix_geometry():
    # a horizontal region from x=2..10 at y=5: rotation 0, crop centred on it, scale 1.5 x width / 16
    lm = torch.zeros(1, 3, 3)
    lm[0, :, 0] = torch.tensor([2.0, 6.0, 10.0])
    lm[0, :, 1] = 5.0
    m = region_matrix(lm, torch.arange(3), 0, 2, (16, 16), (1.5, 1.5))
    centre = m[0, :, :2] @ torch.tensor([8.0, 8.0]) + m[0, :, 2]
    assert torch.allclose(centre, torch.tensor([6.0, 5.0]))
    assert torch.allclose(m[0, 0, 0], torch.tensor(1.5 * 8 / 16)) and abs(float(m[0, 1, 0])) < 1e-6


def test_weights_load_strictly_and_infer_config(tmp_path):
    assert infer_config(DETECTOR_PATH, "detector").blocks[-1] == (96, 96, 1)
    assert infer_config(MESH_PATH, "mesh").num_mesh == 468
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_mesh(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=str(MESH_PATH.name)):
        load_detector(MESH_PATH)  # the mesh file is not a detector: the error names the file


def test_frame_validation():
    assert as_frame(np.zeros((4, 5), np.uint8))[0].shape == (4, 5, 1)
    assert as_frame(torch.zeros(4, 5, 3))[1] == 255.0
    for bad in (np.zeros((4, 5, 2), np.uint8), np.zeros((2, 4, 5, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(FrameError):
            as_frame(bad)


def _reference_sample(image, matrix, n, border):
    """The straightforward form of the 8-bit warp's sampling (on a contiguous copy), to check the fast one against."""
    hgt, wid, ch = image.shape
    image = image.contiguous()
    g = torch.arange(n, dtype=torch.float64)
    m = torch.nan_to_num(matrix.double(), nan=0.0, posinf=0.0, neginf=0.0)
    x = m[0, 0] * g[None, :] + m[0, 1] * g[:, None] + m[0, 2]
    y = m[1, 0] * g[None, :] + m[1, 1] * g[:, None] + m[1, 2]
    qx, qy = torch.round(x * 32).clamp(-2.0 ** 40, 2.0 ** 40).long(), torch.round(y * 32).clamp(-2.0 ** 40, 2.0 ** 40).long()
    x0, y0 = torch.div(qx, 32, rounding_mode="floor"), torch.div(qy, 32, rounding_mode="floor")
    fx, fy = (qx - 32 * x0).float() / 32, (qy - 32 * y0).float() / 32
    out = torch.zeros(n, n, ch)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xs, ys = x0 + dx, y0 + dy
        if border == "zero":
            wt = wt * ((xs >= 0) & (xs < wid) & (ys >= 0) & (ys < hgt))
        out += image[ys.clamp(0, hgt - 1), xs.clamp(0, wid - 1)].float() * wt[..., None]
    return out


@pytest.mark.parametrize("border", ["replicate", "zero"])
def test_sampling_reads_strided_frames_in_place_and_equals_the_plain_form(border):
    """The sampler equals the plain per-neighbour form (to float rounding) and gives the same result, bit for bit,
    on a strided frame (a padded-row array as PyAV returns, a crop view, a channel slice) as on its copy."""
    g = torch.Generator().manual_seed(3)
    padded = torch.randint(0, 256, (40, 64, 4), generator=g, dtype=torch.uint8)
    views = {"padded rows": padded[:, :50, :3], "crop": padded[5:30, 7:41, :3], "rgba": padded[:, :50]}
    for roi in ([[20.3, 18.9, 30.0, 26.0, 0.4]], [[2.0, 3.0, 90.0, 90.0, -2.0]], [[float("nan"), 1, 2, 3, 0]]):
        for name, view in views.items():
            assert not view.is_contiguous()
            m = R.roi_matrix(torch.tensor(roi), 24)[0]
            fast = R.sample(view, m, 24, border)
            assert torch.equal(fast, R.sample(view.contiguous(), m, 24, border)), name
            assert torch.allclose(fast, _reference_sample(view, m, 24, border), atol=1e-4), name
    wide = torch.randint(0, 256, (30, 70, 3), generator=g, dtype=torch.uint8)
    for roi in ([[35.0, 15.0, 40.0, 40.0, 0.3]], [[2.0, 28.0, 200.0, 90.0, 1.1]], [[-50.0, 10.0, 30.0, 30.0, 0.0]]):
        m = R.roi_matrix(torch.tensor(roi), 24)[0]  # the pair gather (replicate, adjacent pixels) is exact
        assert torch.equal(R.sample(wide, m, 24, border), _reference_sample(wide, m, 24, border))
    arr = padded.numpy()[:, :50, :3]  # a numpy view with padded rows is read without a copy
    t, _ = as_frame(arr)
    assert t.data_ptr() == padded.data_ptr() and not t.is_contiguous()
    assert torch.equal(as_frame(arr[::-1])[0], torch.from_numpy(arr[::-1].copy()))  # negative steps: copied
