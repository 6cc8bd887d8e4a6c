"""Real footage (../shared/media, skipped when absent): the 10 s 1080x1920 talking-head clip through both node paths
with the shipped model.

IMAGE path  OmniSyncFaceCrop -> OmniSyncLipSync -> OmniSyncFacePaste (their ComfyUI-free adapters) on the first
            3 s (75 frames: a ComfyUI IMAGE of the whole clip is 6.2 GB, and the path holds two): the same frame
            count, pixels outside each frame's crop box bit-exact, audio fitted to frames / fps exactly.
VIDEO path  OmniSyncLipSyncVideo's adapter, file to file: the same frame count, size and fps, audio = frames / fps.
Few sampling steps: these tests are about plumbing on real frames, not quality.
"""

from fractions import Fraction

import pytest
import torch

from comfy_helpers import pack_module
from conftest import MEDIA

FA = pack_module("nodes.adapters.faces")
LS = pack_module("nodes.adapters.lipsync")
V = pack_module("nodes.adapters.video")
VIDEO_IO = pack_module("omnisync_model.media.video_io")
WEIGHTS = pack_module("omnisync_model.families.omnisync.weights")
BACKEND = pack_module("omnisync_model.backends.omnisync")

CLIP, SPEECH = MEDIA / "talking_head_25fps.mp4", MEDIA / "speech_16k.wav"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CLIP.is_file() or not SPEECH.is_file(),
                                                   reason="../shared/media with the real clip is not present")]
N_FRAMES, FPS, WIDTH, HEIGHT = 250, 25, 1080, 1920
IMAGE_FRAMES = 75  # the IMAGE path's share of the clip (3 s)


@pytest.fixture(scope="module")
def shipped():
    path = WEIGHTS.default_checkpoint()
    assert path is not None, "the demo checkpoint must ship in omnisync_model/assets"
    return BACKEND.OmniSyncBackend(WEIGHTS.load_checkpoint(path))


@pytest.fixture(scope="module")
def speech():
    wave, rate = VIDEO_IO.read_audio(SPEECH)  # 9.6 s: shorter than the clip, so it is padded
    return {"waveform": wave[None], "sample_rate": rate}


def _options():
    return LS.make_options(0.92, 2, 0, 16, 2, 2.5, 1.0, 0.15, 1.5)


def test_face_crop_lipsync_paste_on_the_real_clip(shipped, speech):
    video = VIDEO_IO.read_video(CLIP, max_frames=IMAGE_FRAMES, with_audio=False)
    frames = video.frames  # IMAGE [75,1920,1080,3] float32, as LoadVideo -> GetVideoComponents gives it
    assert frames.shape == (IMAGE_FRAMES, HEIGHT, WIDTH, 3) and video.fps == FPS
    side = int(shipped.config.extra["resolution"])
    crops, crop, crop_mouth = FA.crop_faces(frames, side, 4 * shipped.config.patch_size)
    assert crops.shape[0] == IMAGE_FRAMES and max(crops.shape[1:3]) == side
    synced, fitted = LS.lipsync_images(shipped, crops, float(video.fps), speech, _options(), mouth=crop_mouth)
    pasted = FA.paste_faces(frames, synced, crop)

    assert pasted.shape == frames.shape  # every frame back, full size
    assert fitted["waveform"].shape[-1] == IMAGE_FRAMES * fitted["sample_rate"] // FPS  # 3.000 s exactly
    changed = 0
    for i in range(IMAGE_FRAMES):  # frame by frame: a mask over the whole clip would need another 6 GB
        x, y, w, h = crop.boxes[i].tolist()
        outside = torch.ones(HEIGHT, WIDTH, dtype=torch.bool)
        outside[y:y + h, x:x + w] = False
        assert torch.equal(pasted[i][outside], frames[i][outside]), f"frame {i}: pixels outside the box changed"
        changed += int(not torch.equal(pasted[i], frames[i]))
    assert changed >= IMAGE_FRAMES // 2  # the face really was re-synthesised
    box = crop.boxes[0].tolist()
    assert 0 < box[2] < WIDTH and 0 < box[3] < HEIGHT  # a face box, not the whole frame


def test_video_node_path_on_the_real_clip(tmp_path, shipped, speech):
    result = V.lipsync_video_file(shipped, CLIP, speech, tmp_path, _options())
    info = VIDEO_IO.probe_video(result.path)
    assert (info.n_frames, info.fps, info.width, info.height) == (N_FRAMES, Fraction(FPS), WIDTH, HEIGHT)
    assert result.mouth_frames >= 0.9 * N_FRAMES  # the locator found the small face
    wave, rate = VIDEO_IO.read_audio(result.path)
    assert result.audio_seconds == N_FRAMES / FPS
    assert abs(wave.shape[-1] / rate - N_FRAMES / FPS) < 0.05  # AAC pads to whole 1024-sample frames
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]
