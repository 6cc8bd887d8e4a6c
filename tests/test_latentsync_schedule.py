"""LatentSync's DDIM sampler == Euler in flow coordinates over the mapped sigmas (golden: diffusers' DDIMScheduler
with LatentSync's configs/scheduler_config.json, made in a side venv; diffusers is not needed here)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnisync_model.backends.latentsync import schedule as S

GOLDEN = Path(__file__).parent / "golden" / "latentsync" / "ddim_golden.safetensors"


@pytest.fixture(scope="module")
def g():
    return load_file(str(GOLDEN))


def eps_cond(x, t, g):  # the golden's stand-in network (same formula as its generator)
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(torch.tensor(t / 100.0)) * g["pattern"]


def eps_uncond(x, t, g):
    return 0.4 * torch.sin(x) + 0.1 * g["pattern2"]


def test_tables_and_timesteps_match_diffusers(g):
    assert torch.equal(S.ddim_timesteps(20), g["timesteps"])
    assert S.ddim_timesteps(20).tolist() == list(range(951, 0, -50))
    assert torch.equal(S.alphas_cumprod().float(), g["alphas_cumprod"])


def test_sigma_landmarks():
    sig = S.ddim_sigmas(20)
    assert sig.shape == (21,) and torch.all(sig[1:] < sig[:-1])
    assert sig[0].item() == pytest.approx(0.91686, abs=1e-4)  # t = 951
    assert sig[-1].item() == pytest.approx(0.02834, abs=1e-4)  # abar[0]: the reference stops short of data
    assert S.tau_to_timestep(0.92) == pytest.approx(958.35, abs=0.01)
    assert S.sigma_to_timestep(float(sig[0])) == pytest.approx(951.0, abs=1e-9)
    s = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(S.sigma_from_abar(S.abar_from_sigma(s)), s, atol=1e-12)
    a = S.abar_from_sigma(s)
    assert torch.allclose(S.flow_scale(s), a.sqrt() + (1 - a).sqrt(), atol=1e-12)


def _euler(x_ddpm0, eps_fn, steps=20):
    """Our sampler: x_flow over the mapped sigmas, velocity from the epsilon, one Euler step per DDIM step.
    Returns the trajectory in the reference's (DDPM) coordinates."""
    sig = S.ddim_sigmas(steps).tolist()
    ts = S.ddim_timesteps(steps).tolist()
    x = S.ddpm_to_flow(x_ddpm0.double(), sig[0])
    out = [S.flow_to_ddpm(x, sig[0])]
    for k, t in enumerate(ts):
        ddpm = S.flow_to_ddpm(x, sig[k]).float()  # what the UNet sees
        v = S.velocity_from_eps(x, eps_fn(ddpm, t).double(), sig[k])
        x = S.euler_step(x, v, sig[k], sig[k + 1])
        out.append(S.flow_to_ddpm(x, sig[k + 1]))
    return torch.stack(out).float()


def test_each_euler_step_equals_the_ddim_step(g):
    sig = S.ddim_sigmas(20).tolist()
    traj, eps = g["traj_plain"], g["eps_plain"]
    for k in range(20):
        x = S.ddpm_to_flow(traj[k].double(), sig[k])
        v = S.velocity_from_eps(x, eps[k].double(), sig[k])
        nxt = S.flow_to_ddpm(S.euler_step(x, v, sig[k], sig[k + 1]), sig[k + 1])
        assert (nxt.float() - traj[k + 1]).abs().max().item() < 1e-5, k  # float32 reference: a few ulp


def test_whole_trajectory_equals_ddim(g):
    ours = _euler(g["x_T"], lambda x, t: eps_cond(x, t, g))
    assert (ours - g["traj_plain"]).abs().max().item() < 1e-5


def test_cfg_on_epsilon_equals_cfg_on_velocity(g):
    def guided_eps(x, t):
        return S.guided(eps_uncond(x, t, g), eps_cond(x, t, g), 1.5)

    ours = _euler(g["x_T"], guided_eps)
    assert (ours - g["traj_cfg"]).abs().max().item() < 1e-5
    # the affine identity itself, at every step's state: v(cfg(eps)) == cfg(v(eps))
    sig = S.ddim_sigmas(20).tolist()
    for k, t in enumerate(S.ddim_timesteps(20).tolist()):
        x = S.ddpm_to_flow(g["traj_cfg"][k].double(), sig[k])
        eu, ec = eps_uncond(g["traj_cfg"][k], t, g).double(), eps_cond(g["traj_cfg"][k], t, g).double()
        lhs = S.velocity_from_eps(x, S.guided(eu, ec, 1.5), sig[k])
        rhs = S.guided(S.velocity_from_eps(x, eu, sig[k]), S.velocity_from_eps(x, ec, sig[k]), 1.5)
        assert torch.allclose(lhs, rhs, atol=1e-12)
        assert torch.allclose(S.eps_from_velocity(x, lhs, sig[k]), S.guided(eu, ec, 1.5), atol=1e-12)


@pytest.mark.parametrize("t", [951, 958])
def test_forward_noising_equals_ddpm_add_noise(g, t):
    sigma = float(S.sigma_from_abar(S.alphas_cumprod()[t]))
    ours = S.flow_to_ddpm(S.noised(g["x0"].double(), g["noise"].double(), sigma), sigma)
    assert (ours.float() - g[f"add_noise_{t}"]).abs().max().item() < 1e-5


def test_reference_start_is_the_noise_itself(g):
    sig0 = float(S.ddim_sigmas(20)[0])
    x = S.reference_initial_latent(g["x_T"].double(), sig0)
    assert torch.allclose(S.flow_to_ddpm(x, sig0).float(), g["traj_plain"][0], atol=1e-6)
