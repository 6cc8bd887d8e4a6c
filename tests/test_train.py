"""Training recipe: pair sampling, a smoke run whose loss falls, resume, and DDP with 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from omnisync_model.training.train import Batches, TrainConfig, Trainer, build_dataset, run_training
from omnisync_model.families.omnisync.weights import load_checkpoint

TINY = dict(preset="tiny", batch=4, frames=4, size=32, clips=3, clip_seconds=1.2, warmup=2, lr=2e-3,
            log_every=5, save_every=1000)


@pytest.fixture(scope="module")
def clips():
    return build_dataset(TrainConfig(**TINY))


def test_pairs_follow_the_threshold(clips):
    tc = TrainConfig(**TINY, )
    batches = Batches(tc, clips, seed=0)
    for _ in range(10):
        b = batches.sample()
        for k in range(tc.batch):
            clip = clips[b["clips"][k]]
            a = b["starts"][k]
            assert torch.equal(b["target"][k], clip.frames[a:a + tc.frames])
            if b["sigma"][k] > tc.threshold:  # pseudo-pair: same frames, other lips
                assert torch.equal(b["cond"][k], clip.pseudo[a:a + tc.frames])
            else:  # a different window of the same clip, not overlapping the target
                assert not torch.equal(b["cond"][k], clip.frames[a:a + tc.frames])


def test_pseudo_pairs_differ_only_in_the_mouth(clips):
    diff = (clips[0].frames.int() - clips[0].pseudo.int()).abs().sum(dim=(0, 3))  # [H,W]
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert diff.sum() > 0
    assert (rows.max() - rows.min()) < 0.4 * diff.shape[0] and (cols.max() - cols.min()) < 0.5 * diff.shape[1]


def test_smoke_run_loss_falls(tmp_path, clips):
    """20 steps of plain velocity prediction: the flow-matching loss on a held-out batch falls clearly."""
    tc = TrainConfig(**{**TINY, "prediction": "velocity", "lr": 3e-3}, steps=20)
    trainer = Trainer(tc, tmp_path)
    trainer.set_data(clips)
    held = Batches(tc, clips, seed=123).sample()
    with torch.no_grad():
        before = float(trainer.loss_fn(held))
    batches = Batches(tc, clips, seed=1)
    for _ in range(tc.steps):
        trainer.train_step(batches.sample())
    with torch.no_grad():
        after = float(trainer.loss_fn(held))
    assert after < 0.9 * before, (before, after)


def test_save_and_resume_continue_exactly(tmp_path, clips):
    tc = TrainConfig(**TINY, steps=6)
    full, _ = run_training(tc, tmp_path / "a", clips=clips)
    half, _ = run_training(tc, tmp_path / "b", clips=clips, stop_at=4)
    assert half.step == 4
    resumed, _ = run_training(tc, tmp_path / "b", resume=True, clips=clips)
    assert resumed.step == 6
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    model = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert model.config.prediction == "source_x0" and model.config.extra["resolution"] == 32


def test_ddp_two_processes_keep_identical_parameters(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omnisync_model.cli", "train", "--out", str(out), "--preset", "tiny",
           "--steps", "3", "--batch", "2", "--frames", "4", "--size", "32", "--clips", "2", "--clip-seconds", "1.0",
           "--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "replicas.json").read_text())
    assert report["world"] == 2
    assert report["checksums"][0] == report["checksums"][1]
    assert (out / "checkpoint.safetensors").exists()


def test_difference_weights_emphasise_where_pairs_differ():
    """Weights are 1 + k * d / max(d) rescaled to mean 1; identical positions share the lowest weight."""
    from omnisync_model.training.train import difference_weights

    x0 = torch.zeros(2, 3, 2, 4, 4)
    src = x0.clone()
    src[0, :, 1, 2, 3] = 0.5  # one differing position in sample 0
    src[1, :, 0, 0, 0] = 0.01  # a faint difference in sample 1: same emphasis after normalising
    src[1, :, 0, 1, 1] = 0.005
    w = difference_weights(x0, src, k=9.0)
    assert w.shape == (2, 1, 2, 4, 4)
    assert torch.allclose(w.flatten(1).mean(dim=1), torch.ones(2))
    n = 32
    base0 = n / (n + 9.0)  # raw weights: n - 1 ones and one 10, mean (n + 9) / n
    assert w[0, 0, 1, 2, 3] == pytest.approx(10 * base0)
    assert w[0, 0, 0, 0, 0] == pytest.approx(base0)
    base1 = n / (n + 9.0 + 4.5)
    assert w[1, 0, 0, 0, 0] == pytest.approx(10 * base1)
    assert w[1, 0, 0, 1, 1] == pytest.approx(5.5 * base1)


def test_mouth_weight_changes_the_loss_only_through_the_weights(tmp_path, clips):
    """mouth_weight 0 is the plain loss; a positive weight gives the weighted mean of the same squared errors."""
    from omnisync_model.training.train import FlowLoss, difference_weights, encode_batch

    tc = TrainConfig(**TINY, threshold=0.0)
    trainer = Trainer(tc, tmp_path)
    batch = Batches(tc, clips, seed=5).sample()
    torch.manual_seed(0)
    plain = FlowLoss(trainer.model, clips, trainer.codec)
    weighted = FlowLoss(trainer.model, clips, trainer.codec, mouth_weight=20.0)
    with torch.no_grad():
        lp, lw = float(plain(batch)), float(weighted(batch))
    assert lp != pytest.approx(lw, rel=1e-3)
    x0, src = encode_batch(trainer.codec, batch["target"]), encode_batch(trainer.codec, batch["cond"])
    w = difference_weights(x0, src, 20.0)
    assert float(w.max()) > 5.0  # the pseudo-pairs' lips are emphasised


def test_init_from_a_checkpoint_and_refuse_another_architecture(tmp_path, clips):
    tc = TrainConfig(**TINY, steps=2)
    first, _ = run_training(tc, tmp_path / "a", clips=clips)
    start = tmp_path / "a" / "checkpoint.safetensors"
    again = Trainer(TrainConfig(**TINY, steps=2, init=str(start)), tmp_path / "b")
    ema = load_checkpoint(start)
    for (name, p), q in zip(again.model.named_parameters(), ema.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(again.ema.parameters(), ema.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="differs from the run's"):
        Trainer(TrainConfig(**{**TINY, "preset": "small"}, steps=2, init=str(start)), tmp_path / "c")
