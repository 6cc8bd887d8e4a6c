"""The synthetic benchmark: JSON structure on a tiny model, and the shipped demo model's sync on held-out clips."""

import pytest

import torch

from omnisync_model.training.bench import (ABLATIONS, COUNT_KEYS, METRIC_KEYS, Case, format_table, make_cases,
                                           mean_metrics, measure, run_benchmark, run_case, synth_case)
from omnisync_model.families.omnisync.config import get_preset
from omnisync_model.families.omnisync.model import OmniSyncModel
from omnisync_model.sampling.pipeline import LipSyncOptions
from omnisync_model.training.synthetic import STYLES
from omnisync_model.families.omnisync.weights import default_checkpoint, load_checkpoint


def test_benchmark_structure_on_a_fresh_model():
    """A fresh source_x0 model copies the source: perfect preservation, and every key is present."""
    model = OmniSyncModel(get_preset("tiny").replace(prediction="source_x0", extra={"resolution": 32})).eval()
    result = run_benchmark(model, quick=True, options=LipSyncOptions(steps=2), styles=("cartoon", "sketch"))
    for entry in [result["overall"], *result["styles"].values(), *result["ablations"].values()]:
        assert set(METRIC_KEYS) | set(COUNT_KEYS) <= set(entry)
    assert set(result["ablations"]) == set(ABLATIONS)
    assert result["overall"]["psnr_outside_db"] > 60  # a copy of the source (inf is skipped in the mean)
    assert result["overall"]["off_colour_frames"] == 0  # a copy of the source has the source's mouths
    assert result["overall"]["frames"] == sum(m["frames"] for m in result["styles"].values()) > 0
    assert result["settings"]["solver"] == LipSyncOptions().solver and "off_colour" in format_table(result)


def test_measure_counts_pale_blob_frames():
    """The benchmark's off-colour figure counts the frames where a pale blob replaced the mouth, per case and summed
    per group."""
    case = Case("cartoon", 900_001, 1.0, 25.0, 64)
    clip, _, gt = synth_case(case)
    blob = clip.frames.clone()
    n, h, w, _ = blob.shape
    for i in (3, 4, 9):  # fill frames 3, 4, 9's mouth boxes with a pale, flat tint of the face's colour
        x0, y0, x1, y1 = (clip.mouth_box[i] * torch.tensor([w, h, w, h])).round().long().tolist()
        blob[i, y0:y1, x0:x1] = 0.5 * blob[i, y0, max(0, x0 - 2)] + 0.5
    opts = LipSyncOptions()
    clean, bad = measure(clip.frames, clip, gt, opts), measure(blob, clip, gt, opts)
    assert clean["off_colour_frames"] == 0 and clean["off_colour"] == 0.0
    assert bad["off_colour_frames"] == bad["pale_frames"] == 3 and bad["off_colour"] == 3 / n
    group = mean_metrics([clean, bad])
    assert group["off_colour_frames"] == 3 and group["frames"] == 2 * n
    assert group["off_colour"] == 1.5 / n


def test_held_out_cases_never_use_training_seeds():
    from omnisync_model.training.train import TrainConfig

    tc = TrainConfig()
    cases = make_cases(STYLES, 3, 2.0, 25.0, 64)
    assert all(c.seed >= 900_000 > tc.data_seed + tc.clips for c in cases)
    assert "sketch" not in tc.styles and any(c.style == "sketch" for c in cases)


@pytest.mark.slow
def test_shipped_checkpoint_syncs_on_held_out_clips():
    path = default_checkpoint()
    assert path is not None, "the demo checkpoint must ship in omnisync_model/assets"
    model = load_checkpoint(path)
    # the benchmark's first held-out clip of a trained style (anime) and of the held-out style (sketch)
    cases = [c for c in make_cases(STYLES, 1, 4.0, 25.0, int(model.config.extra["resolution"]))
             if c.style in ("anime", "sketch")]
    rows = [run_case(model, case, LipSyncOptions()) for case in cases]
    assert sum(r["sync_r"] for r in rows) / len(rows) >= 0.7, rows
    for case, row in zip(cases, rows):
        assert row["sync_r"] >= 0.5, (case.style, row)
        assert row["psnr_outside_db"] >= 35.0, (case.style, row)
