"""``omnisync landmarks``: per-frame JSON and a preview of a generated face clip; refusals as one-line errors."""

import json
import subprocess
import sys

from comfy_helpers import talking_clip, write_video


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "omnisync_model.cli", "landmarks", *map(str, argv)],
                          capture_output=True, text=True, timeout=300)


def test_landmarks_json_and_preview_of_a_face_clip(tmp_path):
    frames, speech = talking_clip(0.6, 25.0, size=128, seed=5)  # 15 frames of a drawn realistic face
    video = write_video(tmp_path / "face.mp4", frames, 25.0, speech)
    before = video.read_bytes()
    proc = _run("--video", video, "--json", tmp_path / "out.json", "--draw", tmp_path / "preview.mp4",
                "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["format"] == "omnisync-face-track" and data["frames"] == 15 and len(data["track"]) == 15
    assert (data["width"], data["height"]) == (128, 128) and data["fps"] == 25.0
    found = [f for f in data["track"] if f["source"] == "mesh"]
    assert len(found) >= 12, [f["source"] for f in data["track"]]  # the mesh follows the drawn face
    from omnisync_model.media.video_io import probe_video

    info = probe_video(tmp_path / "preview.mp4")
    assert (info.n_frames, info.width, info.height) == (15, 128, 128)
    assert video.read_bytes() == before and "a face in" in proc.stdout


def test_refusals_are_one_line(tmp_path):
    frames, _ = talking_clip(0.2, 25.0, size=64, seed=5)
    video = write_video(tmp_path / "face.mp4", frames, 25.0)
    before = video.read_bytes()
    for argv, words in [(("--video", tmp_path / "missing.mp4", "--json", tmp_path / "a.json"), "no such file"),
                        (("--video", video, "--json", video), "is the input"),
                        (("--video", video, "--json", tmp_path / "a.json", "--speaker", "nearest"), "point")]:
        proc = _run(*argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-1500:]
    assert video.read_bytes() == before
