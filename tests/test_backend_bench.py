"""``omnisync backend-bench`` runs the real-weight backends' full clip shapes (here at reduced width on the CPU)."""

import pytest

from omnisync_model.cli.backend_bench import run


@pytest.mark.slow
@pytest.mark.parametrize("name, reduce, frames, evaluations", [("latentsync-1.5", 10, 16, 2), ("xdub", 24, 77, 3)])
def test_backend_bench_reports_its_figures(name, reduce, frames, evaluations):
    figures = run(name, device="cpu", dtype="fp32", reduce=reduce, steps=1)
    assert figures["frames"] == frames and figures["evaluations"] == evaluations  # one window, every branch
    assert figures["seconds_per_clip"] == pytest.approx(figures["seconds_per_step"] * figures["reference_steps"])
    assert figures["peak_memory_gb"] > 0 and figures["parameters"] > 0
