"""Tests for omnisync_model.sampling.flow: schedule, progressive init, seeded noise, path maths, Euler sampler."""

import math

import pytest
import torch

from omnisync_model.sampling.flow import (
    euler_sample,
    noisy_sample,
    progressive_init,
    seeded_noise,
    shift_sigma,
    sigma_schedule,
    unshift_sigma,
    velocity_target,
)

SHAPE = (2, 3, 4, 5, 6)  # [B, C, T, h, w]


def _pair(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)


# ---- shift / schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_shift_roundtrip_and_endpoints(shift):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = shift_sigma(t, shift)
    assert float(s[0]) == 0.0 and float(s[-1]) == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(unshift_sigma(s, shift), t, atol=1e-12)


def test_shift_values():
    assert shift_sigma(0.5, 3.0) == pytest.approx(1.5 / 2.0)
    assert shift_sigma(0.25, 1.0) == 0.25
    assert unshift_sigma(0.75, 3.0) == pytest.approx(0.5)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("start", [1.0, 0.92, 0.5, 1e-3])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_schedule_endpoints_monotonic(steps, start, shift):
    s = sigma_schedule(steps, start=start, shift=shift)
    assert s.dtype == torch.float64 and s.shape == (steps + 1,)
    assert float(s[0]) == start
    assert float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())


def test_schedule_linear_when_unshifted():
    s = sigma_schedule(4, start=0.8)
    assert torch.allclose(s, torch.tensor([0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64), atol=1e-15)


def test_schedule_shift_spends_steps_at_high_noise():
    plain, shifted = sigma_schedule(10), sigma_schedule(10, shift=3.0)
    assert bool((shifted[1:-1] > plain[1:-1]).all())


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=-2), dict(steps=2.5), dict(steps=3, start=0.0),
                                    dict(steps=3, start=1.2), dict(steps=3, start=-0.1),
                                    dict(steps=3, shift=0.0)])
def test_schedule_validation(kwargs):
    with pytest.raises(ValueError):
        sigma_schedule(**kwargs)


# ---- seeded noise ------------------------------------------------------------------------------------


def test_seeded_noise_reproducible_and_distinct():
    a = seeded_noise(SHAPE, 1234)
    b = seeded_noise(SHAPE, 1234)
    c = seeded_noise(SHAPE, 1235)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.dtype == torch.float32 and a.shape == SHAPE
    assert abs(float(a.mean())) < 0.2 and abs(float(a.std()) - 1.0) < 0.2


def test_seeded_noise_independent_of_global_rng_and_dtype():
    torch.manual_seed(0)
    a = seeded_noise((3, 4), 7)
    torch.manual_seed(99)
    torch.randn(10)
    b = seeded_noise((3, 4), 7, dtype=torch.float64)
    assert b.dtype == torch.float64
    assert torch.equal(a.double(), b)


def test_seeded_noise_accepts_large_seed():
    big = 2**64 - 1
    assert torch.equal(seeded_noise((5,), big), seeded_noise((5,), big))


# ---- progressive init ----------------------------------------------------------------------------------


def test_progressive_init_tau0_is_source_bitwise():
    src, noise = _pair()
    src[0, 0, 0, 0, 0] = -0.0  # signed zero survives only if no arithmetic is done
    out = progressive_init(src, noise, 0.0)
    assert torch.equal(out, src)
    assert math.copysign(1.0, float(out[0, 0, 0, 0, 0])) == -1.0
    assert out.data_ptr() != src.data_ptr()


def test_progressive_init_tau1_is_noise():
    src, noise = _pair()
    assert torch.equal(progressive_init(src, noise, 1.0), noise)


def test_progressive_init_mix():
    src, noise = _pair()
    out = progressive_init(src, noise, 0.92)
    assert torch.allclose(out, 0.08 * src + 0.92 * noise, atol=1e-6)


@pytest.mark.parametrize("tau", [-0.01, 1.01])
def test_progressive_init_validation(tau):
    src, noise = _pair()
    with pytest.raises(ValueError):
        progressive_init(src, noise, tau)


# ---- training path -------------------------------------------------------------------------------------


def test_noisy_sample_and_velocity_consistent():
    x0, noise = _pair()
    sigma = torch.tensor([0.3, 0.9])
    xs = noisy_sample(x0, noise, sigma)
    v = velocity_target(x0, noise)
    back = xs + (0.0 - sigma).reshape(-1, 1, 1, 1, 1) * v  # [B] -> [B,1,1,1,1]
    assert torch.allclose(back, x0, atol=1e-6)
    to_noise = xs + (1.0 - sigma).reshape(-1, 1, 1, 1, 1) * v
    assert torch.allclose(to_noise, noise, atol=1e-6)


def test_noisy_sample_per_sample_sigma():
    x0, noise = _pair()
    xs = noisy_sample(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(xs[0], x0[0])
    assert torch.equal(xs[1], noise[1])
    assert torch.allclose(noisy_sample(x0, noise, 0.25), 0.75 * x0 + 0.25 * noise)
    with pytest.raises(ValueError):
        noisy_sample(x0, noise, torch.tensor([0.1, 0.2, 0.3]))


# ---- sampler -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.92, 0.5, 0.1])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_oracle_reaches_target(tau, shift):
    source, noise = _pair(1)
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    x = progressive_init(source, noise, tau)
    seen = []

    def oracle(xt, sigma, step):
        seen.append((step, sigma))
        return (xt - target) / sigma

    sigmas = sigma_schedule(12, start=tau, shift=shift)
    out = euler_sample(oracle, x, sigmas)
    assert out.dtype == torch.float32
    assert float((out - target).abs().max()) < 1e-5
    assert [s for s, _ in seen] == list(range(12))
    assert [sig for _, sig in seen] == [float(s) for s in sigmas[:-1]]


def test_euler_exact_steps_and_callback():
    x = torch.ones(1, 1, 1, 1, 2)
    steps = []
    out = euler_sample(lambda xt, s, i: torch.full_like(xt, 2.0), x, [1.0, 0.75, 0.25, 0.0],
                       callback=lambda i, xt: steps.append((i, float(xt[0, 0, 0, 0, 0]))))
    # x + (0.75-1)*2 + (0.25-0.75)*2 + (0-0.25)*2 = 1 - 2 = -1
    assert torch.allclose(out, torch.full_like(x, -1.0))
    assert steps == [(0, 0.5), (1, -0.5), (2, -1.0)]


def test_euler_callback_can_interrupt():
    calls = []

    def cb(i, xt):
        if i == 1:
            raise KeyboardInterrupt

    def vel(xt, s, i):
        calls.append(i)
        return torch.zeros_like(xt)

    with pytest.raises(KeyboardInterrupt):
        euler_sample(vel, torch.zeros(2), sigma_schedule(5), callback=cb)
    assert calls == [0, 1]


def test_euler_keeps_dtype_of_x():
    x = torch.ones(4, dtype=torch.float64)
    out = euler_sample(lambda xt, s, i: torch.ones(4, dtype=torch.float32), x, sigma_schedule(3))
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.zeros(4, dtype=torch.float64), atol=1e-15)


def test_euler_rejects_wrong_velocity_shape():
    with pytest.raises(ValueError):
        euler_sample(lambda xt, s, i: torch.zeros(3), torch.zeros(2), [1.0, 0.0])


# ---- second-order and multistep solvers ---------------------------------------------------------------------

from omnisync_model.sampling.flow import SOLVERS, evaluation_sigmas, solve  # noqa: E402

A_COEF, B_COEF = 0.3, 1.7  # v(sigma) = a + b sigma, independent of x


def _affine_v(x, sigma, step):
    return torch.full_like(x, A_COEF + B_COEF * sigma)


def _affine_exact(x0: float, s0: float, s1: float) -> float:
    """x(s1) for dx/dsigma = a + b sigma from x(s0) = x0."""
    return x0 + A_COEF * (s1 - s0) + 0.5 * B_COEF * (s1 * s1 - s0 * s0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_exact_for_velocity_affine_in_sigma(shift):
    """Exact on every step that does not end at sigma = 0; that last step is Euler (one evaluation, no corrector)."""
    sig = [float(s) for s in sigma_schedule(5, start=0.92, shift=shift)]
    out = solve("heun", _affine_v, torch.zeros(3, dtype=torch.float64), sig[:-1] + [0.05])
    assert torch.allclose(out, torch.full((3,), _affine_exact(0.0, 0.92, 0.05), dtype=torch.float64), atol=1e-14)
    out = solve("heun", _affine_v, torch.zeros(1, dtype=torch.float64), sig)
    last_euler = _affine_exact(0.0, sig[-2], 0.0) + sig[-2] * (A_COEF + B_COEF * sig[-2])  # exact - Euler, last step
    assert float(out[0]) == pytest.approx(_affine_exact(0.0, 0.92, 0.0) - last_euler, abs=1e-14)
    assert abs(last_euler) > 1e-3


def test_heun_never_evaluates_at_sigma_zero():
    seen = []
    solve("heun", lambda xt, s, i: seen.append(s) or torch.zeros_like(xt), torch.zeros(1), sigma_schedule(4))
    assert 0.0 not in seen and len(seen) == 7


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_ab2_exact_after_its_euler_start(shift):
    """Every AB2 step after the first integrates an affine v exactly: the only error is step 0's Euler error."""
    sig = [float(s) for s in sigma_schedule(6, start=0.92, shift=shift)]
    euler_first = _affine_exact(0.0, sig[0], sig[1]) - (sig[1] - sig[0]) * (A_COEF + B_COEF * sig[0])
    expected = _affine_exact(0.0, sig[0], 0.0) - euler_first
    out = solve("ab2", _affine_v, torch.zeros(2, dtype=torch.float64), sig)
    assert float(out[0]) == pytest.approx(expected, abs=1e-14)
    assert abs(euler_first) > 1e-3  # the test can tell an exact start from an Euler start


def test_dpmpp_2m_first_order_step_is_euler():
    """With two sigmas (one step, first order) DPM-Solver++ in flow coordinates is exactly an Euler step."""
    x, _ = _pair(3)
    v = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x.double()
    for s0, s1 in [(0.92, 0.6), (1.0, 0.3), (0.4, 0.0)]:
        out = solve("dpmpp_2m", lambda xt, s, i: v, x, [s0, s1])
        assert torch.allclose(out, x + (s1 - s0) * v, atol=1e-12)


def test_dpmpp_2m_exact_for_constant_data_prediction():
    """D = x - sigma v constant (a single data point): every solver lands on it, whatever the steps."""
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    source, noise = _pair(8)
    x = progressive_init(source.double(), noise.double(), 0.92)
    for name in SOLVERS:
        out = solve(name, lambda xt, s, i: (xt - target) / s, x, sigma_schedule(4, start=0.92, shift=2.0))
        assert torch.allclose(out, target, atol=1e-10), name


def _cos_v(x, sigma, step):
    return math.cos(3.0 * sigma) * x  # dx/dsigma = cos(3 sigma) x -> x(s) = x(s0) exp((sin 3s - sin 3s0) / 3)


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("ab2", 2), ("dpmpp_2m", 2)])
def test_order_of_convergence(name, order):
    x0 = torch.ones(1, dtype=torch.float64)
    exact = math.exp((0.0 - math.sin(3.0 * 0.92)) / 3.0)
    errs = [abs(float(solve(name, _cos_v, x0, sigma_schedule(n, start=0.92))) - exact) for n in (40, 80, 160)]
    rates = [math.log2(errs[k] / errs[k + 1]) for k in range(2)]
    assert all(r > order - 0.2 for r in rates), (name, errs, rates)
    if order == 1:
        assert all(r < 1.2 for r in rates), rates  # Euler really is first order (the test can tell)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_calls_callback_once_per_step_and_counts_evaluations(name):
    sigmas = sigma_schedule(5, start=0.92)
    seen, steps = [], []

    def vel(xt, s, i):
        seen.append(s)
        return torch.full_like(xt, s)

    solve(name, vel, torch.zeros(2), sigmas, callback=lambda i, xt: steps.append(i))
    assert steps == list(range(5))
    assert seen == evaluation_sigmas(name, sigmas)
    assert len(seen) == (9 if name == "heun" else 5)  # Heun: 2 per step, 1 on the step to sigma = 0
    assert all(s in [float(v) for v in sigmas] for s in seen)  # only the schedule's sigmas are ever evaluated


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_callback_can_interrupt(name):
    calls = []

    def cb(i, xt):
        if i == 1:
            raise KeyboardInterrupt

    def vel(xt, s, i):
        calls.append(i)
        return torch.zeros_like(xt)

    with pytest.raises(KeyboardInterrupt):
        solve(name, vel, torch.zeros(2), sigma_schedule(5), callback=cb)
    assert max(calls) == 1


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_keeps_dtype_and_checks_shape(name):
    out = solve(name, lambda xt, s, i: torch.ones(4, dtype=torch.float32), torch.ones(4, dtype=torch.float64),
                sigma_schedule(3))
    assert out.dtype == torch.float64
    with pytest.raises(ValueError):
        solve(name, lambda xt, s, i: torch.zeros(3), torch.zeros(2), [1.0, 0.5, 0.0])


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="solver"):
        solve("rk4", _affine_v, torch.zeros(1), [1.0, 0.0])
    from omnisync_model.sampling.options import LipSyncOptions

    with pytest.raises(ValueError, match="solver"):
        LipSyncOptions(solver="rk4")
