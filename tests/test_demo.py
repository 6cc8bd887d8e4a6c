"""The README's main command, ``omnisync demo``: the shipped model on a generated held-out-style clip."""

import subprocess
import sys

import pytest

from omnisync_model.training.demo import run_demo
from omnisync_model.training.styles import TRAIN_STYLES
from omnisync_model.families.omnisync.weights import default_checkpoint, load_checkpoint


@pytest.mark.slow
def test_demo_command_writes_its_files_and_figures(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "omnisync_model.cli", "demo", "--out", str(tmp_path), "--seconds",
                           "1.5"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "demo.mp4").stat().st_size > 10_000 and (tmp_path / "mouths.png").stat().st_size > 1_000
    for name in ("sync_r", "leakage_r", "psnr_outside_db", "seam_score"):
        assert name in proc.stdout, proc.stdout


def test_demo_defaults_to_a_style_held_out_of_training():
    import inspect

    style = inspect.signature(run_demo).parameters["style"].default
    assert style == "sketch" and style not in TRAIN_STYLES
    assert default_checkpoint() is not None and load_checkpoint(default_checkpoint()).config.name == "small"
