"""The synthetic benchmark: JSON structure on a tiny model, and the shipped demo model's sync on held-out clips."""

import math

import pytest
import torch

from omnisync_model.bench import ABLATIONS, METRIC_KEYS, make_cases, run_benchmark, run_case
from omnisync_model.config import get_preset
from omnisync_model.model import OmniSyncModel
from omnisync_model.pipeline import LipSyncOptions
from omnisync_model.synthetic import STYLES
from omnisync_model.weights import default_checkpoint, load_checkpoint


def test_benchmark_structure_on_a_fresh_model():
    """A fresh source_x0 model copies the source: perfect preservation, and every key is present."""
    model = OmniSyncModel(get_preset("tiny").replace(prediction="source_x0", extra={"resolution": 32})).eval()
    result = run_benchmark(model, quick=True, options=LipSyncOptions(steps=2), styles=("cartoon", "sketch"))
    for entry in [result["overall"], *result["styles"].values(), *result["ablations"].values()]:
        assert set(METRIC_KEYS) <= set(entry)
    assert set(result["ablations"]) == set(ABLATIONS)
    assert result["overall"]["psnr_outside_db"] > 60  # a copy of the source (inf is skipped in the mean)


def test_held_out_cases_never_use_training_seeds():
    from omnisync_model.train import TrainConfig

    tc = TrainConfig()
    cases = make_cases(STYLES, 3, 2.0, 25.0, 64)
    assert all(c.seed >= 900_000 > tc.data_seed + tc.clips for c in cases)
    assert "sketch" not in tc.styles and any(c.style == "sketch" for c in cases)


def test_shipped_checkpoint_syncs_on_held_out_clips():
    path = default_checkpoint()
    assert path is not None, "the demo checkpoint must ship in omnisync_model/assets"
    model = load_checkpoint(path)
    cases = make_cases(("anime", "sketch"), 1, 3.0, 25.0, int(model.config.extra["resolution"]))
    rows = [run_case(model, case, LipSyncOptions()) for case in cases]
    for case, row in zip(cases, rows):
        assert row["sync_r"] >= 0.7, (case.style, row)
        assert math.isfinite(row["psnr_outside_db"])
