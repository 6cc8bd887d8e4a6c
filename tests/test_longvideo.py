"""`omnisync longvideo` on a tiny scale: two clips through the file path in child processes, every frame checked.

The memory target itself (peak RSS of 10 minutes within 1.2x of 1 minute) is measured by the benchmark, not here.
"""

import json

from omnisync_model.cli.main import main
from omnisync_model.cli.longvideo import format_report, run_benchmark, speech_waveform
from omnisync_model.media.video_io import probe_video


def test_speech_waveform_is_made_in_pieces_of_the_right_total_length():
    wave = speech_waveform(25.0)
    assert wave.shape == (1, 25 * 16000) and wave.dtype.is_floating_point
    assert float(wave[0, 10 * 16000:10 * 16000 + 1600].abs().max()) > 0  # the second piece is speech, not padding


def test_benchmark_runs_both_lengths_and_checks_the_outputs(tmp_path):
    report = run_benchmark(tmp_path, (0.02, 0.04), size=96, steps=1)  # 30 and 60 frames
    assert set(report["runs"]) == {"0.02min", "0.04min"}
    for name, frames in (("0.02min", 30), ("0.04min", 60)):
        run = report["runs"][name]
        assert run["frames_out"] == run["frames_file"] == frames and run["ok_frames"] and run["ok_audio"]
        assert run["fps"] == "25" and run["peak_kb"] >= run["baseline_kb"] > 0
        info = probe_video(tmp_path / f"synced_{name[:-3]}min.mp4")
        assert (info.n_frames, info.width, info.height) == (frames, 96, 96)
    ratio = report["runs"]["0.04min"]["peak_kb"] / report["runs"]["0.02min"]["peak_kb"]
    assert report["peak_rss_ratio"] == ratio
    assert "peak RSS long / short" in format_report(report)


def test_cli_writes_the_json_report(tmp_path, capsys):
    code = main(["longvideo", "--work", str(tmp_path), "--minutes", "0.02", "0.02", "--size", "64", "--steps", "1",
                 "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == (0 if report["ok"] else 1) and "0.02min" in report["runs"]
    assert "peak RSS long / short" in capsys.readouterr().out
