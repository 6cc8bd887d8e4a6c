"""Tests for omnisync_model.sampling.guidance (DS-CFG) with a fake linear model that counts its calls."""

import math

import pytest
import torch

from omnisync_model.sampling.flow import euler_sample, sigma_schedule
from omnisync_model.sampling.guidance import (
    DSCFG,
    Guidance,
    GuidedDenoiser,
    chain_combine,
    ds_cfg_guidance,
    combine,
    guidance_weight,
    needs_uncond,
    spatial_map,
    temporal_weight,
)

B, C, T, H, W = 2, 3, 4, 9, 9  # latent [B, C, T, h, w]
K, D = 2, 5  # audio [B, T, K, D]
NULL_AUDIO = -3.0


class FakeModel:
    """v = 2 x + source + sigma + a(b, t), a = mean of the audio over K, D (or NULL_AUDIO when dropped)."""

    def __init__(self):
        self.batches = []  # batch size of every call
        self.drops = []

    def __call__(self, x, source, sigma, audio, drop_audio=None):
        assert sigma.shape == (x.shape[0],)
        self.batches.append(x.shape[0])
        self.drops.append(None if drop_audio is None else drop_audio.tolist())
        if audio is None:
            a = torch.full(x.shape[:1] + x.shape[2:3], NULL_AUDIO)  # [B, T]
        else:
            a = audio.mean(dim=(2, 3))  # [B, T, K, D] -> [B, T]
            if drop_audio is not None:
                a = torch.where(drop_audio[:, None], torch.full_like(a, NULL_AUDIO), a)
        return 2 * x + source + sigma.reshape(-1, 1, 1, 1, 1) + a[:, None, :, None, None]


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=gen)
    src = torch.randn(B, C, T, H, W, generator=gen)
    audio = torch.randn(B, T, K, D, generator=gen) + 1.0
    return x, src, audio


def _branches(model, x, src, audio, sigma):
    sig = torch.full((B,), sigma)
    v_c = model(x, src, sig, audio, drop_audio=None)
    v_u = model(x, src, sig, audio, drop_audio=torch.ones(B, dtype=torch.bool))
    return v_c, v_u


def _centred(t=T):
    """Mouth centre on the middle cell (4, 4) of a 9 x 9 latent for every frame."""
    return torch.full((t, 2), 4.5 / 9.0), torch.ones(t, dtype=torch.bool)


# ---- parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(w_peak=0.5), dict(w_base=-0.1), dict(w_base=4.0), dict(radius=0.0),
                                    dict(gamma=-1.0)])
def test_dscfg_validation(kwargs):
    with pytest.raises(ValueError):
        DSCFG(**kwargs)


def test_dscfg_static_and_frozen():
    cfg = DSCFG.static(4.5)
    assert (cfg.w_peak, cfg.w_base, cfg.gamma) == (4.5, 4.5, 0.0)
    with pytest.raises(Exception):
        cfg.w_peak = 2.0
    with pytest.raises(ValueError):
        DSCFG.static(0.5)


# ---- spatial map ---------------------------------------------------------------------------------------


def test_map_peaks_at_mouth_and_falls_along_rays():
    cfg = DSCFG(w_peak=3.0, w_base=1.0, radius=0.15)
    c, v = _centred(1)
    g = spatial_map(c, v, H, W, cfg)[0]  # [h, w]
    assert g.shape == (H, W) and g.dtype == torch.float32
    assert float(g[4, 4]) == pytest.approx(1.0, abs=1e-7)
    assert float(g.max()) == float(g[4, 4])
    for dy, dx in [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1)]:
        ray = [float(g[4 + k * dy, 4 + k * dx]) for k in range(5)]
        assert all(a > b for a, b in zip(ray, ray[1:])), ray
    assert float(g.min()) >= cfg.w_base / cfg.w_peak


def test_map_exact_value():
    cfg = DSCFG(w_peak=4.0, w_base=2.0, radius=0.2)
    centres = torch.tensor([[0.3, 0.6]])
    g = spatial_map(centres, torch.tensor([True]), 5, 10, cfg)
    # cell (i=1, j=7): centre (7.5, 1.5) px; mouth at (0.3*10, 0.6*5) = (3.0, 3.0) px; s = 0.2 * 5 = 1
    d2 = (7.5 - 3.0) ** 2 + (1.5 - 3.0) ** 2
    expect = (2.0 + (4.0 - 2.0) * math.exp(-d2 / 2.0)) / 4.0
    assert float(g[0, 1, 7]) == pytest.approx(expect, rel=1e-6)


def test_map_far_value_approaches_floor():
    cfg = DSCFG(w_peak=5.0, w_base=2.0, radius=0.05)
    g = spatial_map(torch.tensor([[0.0, 0.0]]), torch.tensor([True]), 64, 64, cfg)
    assert float(g[0, -1, -1]) == pytest.approx(0.4, abs=1e-6)
    assert float(g.min()) >= 0.4 - 1e-7


def test_map_invalid_frames_uniform():
    cfg = DSCFG()
    centres = torch.tensor([[0.5, 0.5], [0.2, 0.8], [float("nan"), 0.5]])
    g = spatial_map(centres, torch.tensor([True, False, True]), H, W, cfg)
    assert torch.equal(g[1], torch.ones(H, W))
    assert torch.equal(g[2], torch.ones(H, W))  # non-finite centre treated as missing
    assert float(g[0].min()) < 0.5


def test_map_validation():
    with pytest.raises(ValueError):
        spatial_map(torch.zeros(3, 3), torch.ones(3, dtype=torch.bool), H, W, DSCFG())
    with pytest.raises(ValueError):
        spatial_map(torch.zeros(3, 2), torch.ones(2, dtype=torch.bool), H, W, DSCFG())


# ---- temporal weight / combination ---------------------------------------------------------------------


def test_temporal_weight():
    cfg = DSCFG(w_peak=3.0, gamma=1.5)
    assert temporal_weight(0.92, 0.92, cfg) == pytest.approx(3.0)
    assert temporal_weight(0.46, 0.92, cfg) == pytest.approx(3.0 * 0.5**1.5)
    assert temporal_weight(0.0, 0.92, cfg) == 0.0
    assert temporal_weight(0.0, 0.92, DSCFG.static(2.0)) == 2.0


def test_guidance_weight_floor_and_needs_uncond():
    cfg = DSCFG(w_peak=3.0, w_base=0.0)
    gmap = spatial_map(*_centred(), H, W, cfg)
    w = guidance_weight(gmap, 0.92, 0.92, cfg)
    assert float(w.min()) == 1.0 and float(w.max()) == pytest.approx(3.0)
    assert needs_uncond(w)
    assert not needs_uncond(guidance_weight(gmap, 0.0, 0.92, cfg))
    assert not needs_uncond(torch.ones(2, 3))
    assert needs_uncond(torch.tensor([1.0, 1.0 + 1e-6]))


def test_combine_broadcasts_weight_per_pixel():
    v_c, v_u = torch.full((B, C, T, H, W), 2.0), torch.full((B, C, T, H, W), 1.0)
    wt = torch.ones(T, H, W)
    wt[1, 2, 3] = 5.0
    out = combine(v_c, v_u, wt)
    assert float(out[1, 2, 1, 2, 3]) == 6.0
    assert float(out.sum()) == pytest.approx(2.0 * out.numel() + 4.0 * B * C)
    with pytest.raises(ValueError):
        combine(v_c, v_u, torch.ones(T, H, W + 1))


# ---- GuidedDenoiser with DS-CFG ------------------------------------------------------------------------


def _denoiser(model, src, audio):
    """A backend-style denoise(x, sigma, cond, branches) around the fake model: branch-major batch, "uncond"
    drops the audio."""

    def denoise(x, sigma, cond, branches):
        n, b = len(branches), x.shape[0]
        drop = torch.tensor([br == "uncond" for br in branches for _ in range(b)])  # [n*B]
        sig = torch.full((n * b,), float(sigma))
        return model(torch.cat([x] * n), torch.cat([src] * n), sig, torch.cat([audio] * n),
                     drop_audio=drop if bool(drop.any()) else None)

    return denoise


def _guided(model, src, audio, gmap, sigma_start, cfg):
    return GuidedDenoiser(_denoiser(model, src, audio), None, ds_cfg_guidance(gmap, sigma_start, cfg))


@pytest.mark.parametrize("sigma", [0.9, 0.3, 0.0])
def test_uniform_map_equals_plain_cfg(sigma):
    model = FakeModel()
    x, src, audio = _inputs()
    cfg = DSCFG.static(4.0)
    gmap = spatial_map(*_centred(), H, W, cfg)
    assert torch.equal(gmap, torch.ones(T, H, W))
    out = _guided(model, src, audio, gmap, 0.92, cfg)(x, sigma, 0)
    v_c, v_u = _branches(model, x, src, audio, sigma)
    assert not torch.allclose(v_c, v_u)
    assert torch.allclose(out, v_u + 4.0 * (v_c - v_u), atol=1e-5)


def test_weight_one_gives_conditional_branch_single_call():
    model = FakeModel()
    x, src, audio = _inputs()
    cfg = DSCFG.static(1.0)
    gv = _guided(model, src, audio, spatial_map(*_centred(), H, W, cfg), 1.0, cfg)
    out = gv(x, 0.7, 0)
    assert (gv.calls, gv.evaluations) == (1, B)
    assert model.batches == [B] and model.drops == [None]
    v_c, _ = _branches(model, x, src, audio, 0.7)
    assert torch.equal(out, v_c)


def test_one_branch_guidance_is_that_branch_in_one_call():
    model = FakeModel()
    x, src, audio = _inputs()
    gv = GuidedDenoiser(_denoiser(model, src, audio), None, Guidance(("cond",), lambda s, i: []))
    out = gv(x, 0.5, 0)
    assert (gv.calls, gv.evaluations) == (1, B) and model.drops == [None]
    assert torch.equal(out, _branches(model, x, src, audio, 0.5)[0])


def test_batched_forward_matches_separate_calls():
    model = FakeModel()
    x, src, audio = _inputs(3)
    cfg = DSCFG(w_peak=3.0, w_base=1.0, radius=0.2)
    centres = torch.tensor([[0.3, 0.4], [0.5, 0.5], [0.7, 0.6], [0.5, 0.5]])
    gmap = spatial_map(centres, torch.tensor([True, True, True, False]), H, W, cfg)
    gv = _guided(model, src, audio, gmap, 0.92, cfg)
    out = gv(x, 0.8, 0)
    assert (gv.calls, gv.evaluations) == (1, 2 * B)
    assert model.batches == [2 * B]
    assert model.drops == [[True] * B + [False] * B]  # chain order: uncond, then cond
    v_c, v_u = _branches(model, x, src, audio, 0.8)
    expect = combine(v_c, v_u, guidance_weight(gmap, 0.8, 0.92, cfg))
    assert torch.allclose(out, expect, atol=1e-5)
    # per-pixel weights actually vary, so this is not plain CFG
    plain = v_u + 3.0 * (0.8 / 0.92) ** 1.5 * (v_c - v_u)
    assert not torch.allclose(out, plain, atol=1e-3)


@pytest.mark.parametrize("w_peak,gamma,shift", [(3.0, 1.5, 1.0), (3.0, 1.5, 3.0), (5.0, 2.0, 1.0)])
def test_uncond_skipped_exactly_where_weight_is_one(w_peak, gamma, shift):
    model = FakeModel()
    x, src, audio = _inputs()
    tau, steps = 0.92, 30
    cfg = DSCFG(w_peak=w_peak, w_base=1.0, radius=0.15, gamma=gamma)
    gmap = spatial_map(*_centred(), H, W, cfg)  # max g = 1 exactly: the centre lies on a cell centre
    sigmas = sigma_schedule(steps, start=tau, shift=shift)
    gv = _guided(model, src, audio, gmap, tau, cfg)
    euler_sample(gv, x, sigmas)
    guided = [w_peak * (float(s) / tau) ** gamma * 1.0 > 1.0 for s in sigmas[:-1]]
    assert 0 < sum(guided) < steps  # the test exercises both paths
    assert gv.calls == steps == len(model.batches)
    assert model.batches == [2 * B if g else B for g in guided]
    assert gv.evaluations == B * (steps + sum(guided))


def test_force_uncond_runs_both_branches_with_equal_output():
    x, src, audio = _inputs(5)
    tau, steps = 0.92, 12
    cfg = DSCFG(w_peak=3.0, w_base=1.0, radius=0.15, gamma=1.5)
    gmap = spatial_map(*_centred(), H, W, cfg)
    sigmas = sigma_schedule(steps, start=tau)
    skip_model, both_model = FakeModel(), FakeModel()
    skip = _guided(skip_model, src, audio, gmap, tau, cfg)
    both = _guided(both_model, src, audio, gmap, tau, DSCFG(**{**vars(cfg), "force_uncond": True}))
    out_skip, out_both = euler_sample(skip, x, sigmas), euler_sample(both, x, sigmas)
    guided = sum(3.0 * (float(s) / tau) ** 1.5 > 1.0 for s in sigmas[:-1])
    assert 0 < guided < steps
    assert skip.evaluations == B * (steps + guided)
    assert both.evaluations == 2 * B * steps and both_model.batches == [2 * B] * steps
    assert both.calls == skip.calls == steps
    assert torch.allclose(out_skip, out_both, atol=1e-5, rtol=0)
    assert not torch.equal(out_skip, x)  # the sampler moved the sample: the comparison is not vacuous


def test_shape_checks():
    model = FakeModel()
    x, src, audio = _inputs()
    with pytest.raises(ValueError):
        _guided(model, src, audio, torch.ones(T, H, W + 1), 1.0, DSCFG())(x, 1.0, 0)
    with pytest.raises(ValueError):
        ds_cfg_guidance(torch.ones(T, H, W), 0.0, DSCFG())
    bad = GuidedDenoiser(lambda x, s, c, br: x, None, ds_cfg_guidance(torch.ones(T, H, W), 1.0, DSCFG()))
    with pytest.raises(ValueError, match="denoise returned"):
        bad(x, 1.0, 0)  # two branches asked for, one returned


# ---- three-branch chains (X-Dub style) ------------------------------------------------------------------


def _three(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, C, T, H, W, generator=g) for _ in range(3)]


def _table_denoiser(values, log):
    names = ("nega", "pr", "pra")

    def denoise(x, sigma, cond, branches):
        log.append(list(branches))
        return torch.cat([values[names.index(b)] for b in branches])

    return denoise


def test_chain_combine_is_the_three_branch_rule():
    nega, pr, pra = _three()
    r, a = 2.5, torch.rand(T, H, W) * 10
    want = nega + r * (pr - nega) + a * (pra - pr)
    assert torch.allclose(chain_combine([nega, pr, pra], [r, a]), want, atol=1e-5)


@pytest.mark.parametrize("weights,runs", [((2.5, 7.0), ["nega", "pr", "pra"]), ((1.0, 7.0), ["pr", "pra"]),
                                          ((1.0, 1.0), ["pra"]), ((3.0, 3.0), ["nega", "pra"])])
def test_three_branch_chain_runs_only_branches_with_nonzero_coefficients(weights, runs):
    values = _three(1)
    log = []
    gv = GuidedDenoiser(_table_denoiser(values, log), None, Guidance(("nega", "pr", "pra"), lambda s, i: weights))
    out = gv(torch.zeros(B, C, T, H, W), 0.5, 0)
    assert log == [runs] and gv.evaluations == B * len(runs)
    nega, pr, pra = values
    want = nega + weights[0] * (pr - nega) + weights[1] * (pra - pr)
    assert torch.allclose(out, want, atol=1e-5)
