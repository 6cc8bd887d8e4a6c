"""X-Dub's sampler facts against the reference (goldens from its FlowMatchScheduler("Wan"), its guidance
schedules and its border replacement, run step by step in bf16 on random inputs)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnisync_model.backends.xdub import schedule as S

GOLDEN = Path(__file__).parent / "golden" / "xdub" / "schedule.safetensors"


@pytest.fixture(scope="module")
def g():
    return load_file(str(GOLDEN))


@pytest.mark.parametrize("steps", [50, 20, 7])
def test_sigmas_and_timesteps_are_the_reference(g, steps):
    sigmas = S.xdub_sigmas(steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps,)
    assert torch.equal(sigmas, g[f"s{steps}.sigmas"])
    assert torch.equal(S.xdub_timesteps(sigmas), g[f"s{steps}.timesteps"])
    assert sigmas[0] == 1.0 and torch.all(sigmas[1:] < sigmas[:-1])
    full = S.euler_sigmas(steps)
    assert full[-1] == 0 and torch.equal(full[:-1], sigmas)


def test_model_timestep_is_bf16_rounded(g):
    ts = S.xdub_timesteps(S.xdub_sigmas())
    rounded = torch.stack([S.model_timestep(t) for t in ts])
    assert rounded.dtype == torch.bfloat16 and torch.equal(rounded, g["run.model_timesteps"])
    assert (rounded.float().squeeze(1) != ts).any()  # the rounding is real (e.g. 998.x -> 996 or 1000)


def test_weights_per_step_bit_exact_in_bf16(g):
    for i, timestep in enumerate(g["run.model_timesteps"]):
        t = S.guidance_time(timestep)
        assert torch.equal(S.ref_weight(t), g["run.ref_scale"][i]), i
        assert torch.equal(S.audio_weight(t), g["run.audio_scale"][i]), i


def test_ref_weight_shape_fp32(g):
    t = g["dense.t"]
    assert torch.allclose(S.ref_weight(t), g["dense.ref_scale"], atol=1e-6)
    assert torch.allclose(S.ref_weight(t, 2.0), g["dense.ref_scale_2"], atol=1e-6)
    r = S.ref_weight(torch.tensor([1.0, 0.8, 0.6, 0.4, 0.1]))
    assert torch.allclose(r, torch.tensor([2.5, 2.0, 1.5, 1.125, 0.75]), atol=1e-6)  # plateaus and band centres
    assert torch.allclose(S.audio_weight(torch.tensor([1.0, 0.25])), torch.tensor([10.0, 1.25]))


def test_three_branch_sampling_loop_bit_exact(g):
    """50 steps in bf16: border ring from the noised source, guidance, Euler step, motion frames written back."""
    sigmas = S.xdub_sigmas()
    x, src, noise = g["run.latents0"], g["run.source"], g["run.noise"]
    for i, timestep in enumerate(g["run.model_timesteps"]):
        x = S.replace_border(x, S.noised(src, noise, S.border_sigma(timestep)), width=1, start_frame=2)
        assert torch.equal(x, g["run.bordered"][i]), i
        nega, pr, pra = g["run.preds"][i].chunk(3, dim=0)
        t = S.guidance_time(timestep)
        v = S.combine_branches(nega, pr, pra, S.ref_weight(t), S.audio_weight(t))
        assert torch.equal(v, g["run.combined"][i]), i
        nxt = sigmas[i + 1] if i + 1 < len(sigmas) else torch.tensor(0.0)
        x = S.euler_step(x, v, sigmas[i], nxt)
        x[:, :, :2] = src[:, :, :2]
        assert x.dtype == torch.bfloat16 and torch.equal(x, g["run.latents"][i]), i


def test_replace_border_ring_only():
    x, b = torch.zeros(1, 2, 3, 5, 6), torch.ones(1, 2, 3, 5, 6)
    out = S.replace_border(x, b, width=1, start_frame=1)
    assert not out[:, :, 0].any() and not out[:, :, 1:, 1:-1, 1:-1].any()
    assert out[:, :, 1:].sum() == 2 * 2 * (5 * 6 - 3 * 4)
    assert S.replace_border(x, b, width=0) is x and not x.any()
