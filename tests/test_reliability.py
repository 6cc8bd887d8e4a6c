"""Reliability: the "bad input" table walked through the one-node path (``nodes.adapters.lipsync_images``), the
exact function the OmniSyncLipSync node runs, without ComfyUI.

Every row is one parametrized case with its outcome asserted precisely:
  error rows  a ValueError whose message names the input (images / audio / fps) and what was expected, raised
              before anything is sampled (the progress hook never fires, the model is never prepared), and the
              same model object still gives the reference output afterwards;
  ok rows     exactly F frames of the input's height x width, 3 channels, finite, in 0..1, every sampling step
              reported, and the fitted audio exactly round(F / fps * sample_rate) samples with the input's
              channels (its prefix, zero-padded or trimmed).
Plus the shipped demo model on a held-out synthetic clip: silent audio must shut a talking mouth.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import randomize_zero_inits
from comfy_helpers import pack_module

LS = pack_module("nodes.adapters.lipsync")
P = pack_module("omnisync_model.sampling.pipeline")
BACKEND = pack_module("omnisync_model.backends.omnisync")
CONFIG = pack_module("omnisync_model.families.omnisync.config")
MODEL = pack_module("omnisync_model.families.omnisync.model")
WEIGHTS = pack_module("omnisync_model.families.omnisync.weights")
SYNTH = pack_module("omnisync_model.training.synthetic")
METRICS = pack_module("omnisync_model.training.metrics")
BENCH = pack_module("omnisync_model.training.bench")

OPTIONS = LS.make_options(0.9, 2, 0, 8, 2, 2.5, 1.0, 0.15, 1.5)  # tau, steps, seed, window, overlap, DS-CFG
SR = 16000
FPS = 25.0
N_FRAMES, SIZE = 6, 32
VIDEO_SAMPLES = round(N_FRAMES / FPS * SR)  # 3840: the default video lasts 0.24 s


@pytest.fixture(scope="module")
def model():
    """Tiny random model with non-zero gates (as in test_nodes_adapters): its output depends on every input."""
    torch.manual_seed(0)
    m = MODEL.OmniSyncModel(CONFIG.get_preset("tiny").replace(external_audio_dim=8)).eval()
    randomize_zero_inits(m, seed=1)  # gates / output get small values: the output depends on every input
    return BACKEND.OmniSyncBackend(m)


# --------------------------------------------------------------------------------------------- inputs


def frames(n=N_FRAMES, h=SIZE, w=SIZE, c=3, seed=0):
    """ComfyUI IMAGE [F,H,W,C] float32 in 0..1."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, h, w, c), generator=g)


def audio(n=16000, channels=1, rate=SR, seed=0):
    """ComfyUI AUDIO {"waveform": [1,C,N], "sample_rate"}: noisy speech-band tone."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / rate
    wave = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn((channels, n), generator=g)
    return {"waveform": wave[None].float(), "sample_rate": rate}


def silent(n=16000, channels=1, rate=SR):
    return {"waveform": torch.zeros(1, channels, n), "sample_rate": rate}


def poke(x, index, value):
    """A copy of x with one element set (a NaN / Inf sample or pixel)."""
    x = x.clone()
    x[index] = value
    return x


def poke_audio(a, index, value):
    return {"waveform": poke(a["waveform"], index, value), "sample_rate": a["sample_rate"]}


class Hooks:
    """NodeHooks that record what the glue would be asked to do (load the model, report sampling progress)."""

    def __init__(self, model):
        self.prepared, self.progress = [], []
        self.hooks = LS.NodeHooks(prepare=lambda tokens: self.prepared.append(tokens) or model,
                                 progress=lambda done, total: self.progress.append((done, total)))


def run(model, images, fps, aud, hooks=None):
    return LS.lipsync_images(model, images, fps, aud, OPTIONS, vae=None, mouth=None, audio_features=None,
                            **({"hooks": hooks.hooks} if hooks is not None else {}))


@pytest.fixture(scope="module")
def reference(model):
    """A good run on the module's model object, made before any bad input reached it."""
    images, aud = frames(seed=7), audio(seed=7)
    out, fitted = run(model, images, FPS, aud)
    return images, aud, out, fitted


# --------------------------------------------------------------------------------------------- error rows

NAN, INF = float("nan"), float("inf")
IMAGES_NOT_FINITE = r"images.*(NaN|Inf)"
AUDIO_NOT_FINITE = r"audio.*(NaN|Inf)"
FPS_MESSAGE = r"fps must be a positive finite number, got "

# (id, images, fps, audio, regex the message must match): each message names the input and what was expected
ERROR_ROWS = [
    ("video: 0 frames", lambda: frames(n=0), FPS, audio,
     r"images has no pixels \(shape \[0, 32, 32, 3\]\); need at least 1 frame"),
    ("video: NaN in a frame", lambda: poke(frames(), (3, 5, 7, 1), NAN), FPS, audio, IMAGES_NOT_FINITE),
    ("video: +Inf in a frame", lambda: poke(frames(), (0, 0, 0, 0), INF), FPS, audio, IMAGES_NOT_FINITE),
    ("video: -Inf in a frame", lambda: poke(frames(), (5, 31, 31, 2), -INF), FPS, audio, IMAGES_NOT_FINITE),
    ("video: NaN in a grayscale frame", lambda: poke(frames(c=1), (3, 5, 7, 0), NAN), FPS, audio,
     IMAGES_NOT_FINITE),
    # 20 frames in windows of 8: the NaN sits in the last window, found before the first window is sampled
    ("video: NaN in a later window's frame", lambda: poke(frames(n=20), (18, 4, 4, 0), NAN), FPS,
     lambda: audio(n=16000), IMAGES_NOT_FINITE),
    ("audio: NaN sample", frames, FPS, lambda: poke_audio(audio(), (0, 0, 100), NAN), AUDIO_NOT_FINITE),
    ("audio: +Inf sample", frames, FPS, lambda: poke_audio(audio(), (0, 0, 100), INF), AUDIO_NOT_FINITE),
    ("audio: -Inf sample in stereo", frames, FPS, lambda: poke_audio(audio(channels=2), (0, 1, 2000), -INF),
     AUDIO_NOT_FINITE),
    ("audio: empty (0 samples)", frames, FPS, lambda: silent(n=0),
     r"audio waveform must be \[batch, channels, samples\] with samples > 0, got \[1, 1, 0\]"),
    ("audio: sample_rate 0", frames, FPS, lambda: audio(rate=0),
     r"audio sample_rate must be a whole number of Hz in 8000..96000, got 0"),
    ("audio: sample_rate 4000 (below 8 kHz)", frames, FPS, lambda: audio(n=2000, rate=4000),
     r"audio sample_rate must be a whole number of Hz in 8000..96000, got 4000"),
    ("audio: sample_rate 192000 (above 96 kHz)", frames, FPS, lambda: audio(n=96000, rate=192000),
     r"audio sample_rate must be a whole number of Hz in 8000..96000, got 192000"),
    ("fps: 0", frames, 0, audio, FPS_MESSAGE + r"0\.0"),
    ("fps: negative", frames, -25.0, audio, FPS_MESSAGE + r"-25\.0"),
    ("fps: NaN", frames, NAN, audio, FPS_MESSAGE + "nan"),
    ("fps: inf", frames, INF, audio, FPS_MESSAGE + "inf"),
]


@pytest.mark.parametrize("make_images, fps, make_audio, match",
                         [pytest.param(*row[1:], id=row[0]) for row in ERROR_ROWS])
def test_bad_input_is_refused_before_sampling(model, reference, make_images, fps, make_audio, match):
    """Each requirement is checked and all failures are reported together (a wrong message must not hide that
    sampling ran, and the other way round)."""
    hooks = Hooks(model)
    with pytest.raises(ValueError) as refused:
        run(model, make_images(), fps, make_audio(), hooks)
    problems = []
    if not re.search(match, str(refused.value)):
        problems.append(f"message {str(refused.value)!r} does not match {match!r}")
    if hooks.progress:
        problems.append(f"sampling ran before the error: progress calls {hooks.progress}")
    if hooks.prepared:
        problems.append(f"the model was prepared (loaded) before the error: prepare calls {hooks.prepared}")
    # the same model object still works afterwards, bit for bit as before any bad input
    images, aud, want_out, want_fitted = reference
    out, fitted = run(model, images, FPS, aud)
    if not (torch.equal(out, want_out) and torch.equal(fitted["waveform"], want_fitted["waveform"])):
        problems.append("a good run after the error differs from the reference run")
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------------------------- ok rows

# (id, images, fps, audio)
OK_ROWS = [
    ("video: 1 frame", lambda: frames(n=1), FPS, audio),
    ("video: 37x53 (not a multiple of the codec x patch factor)", lambda: frames(h=37, w=53), FPS, audio),
    ("video: grayscale C=1", lambda: frames(c=1), FPS, audio),
    ("video: RGBA C=4", lambda: frames(c=4), FPS, audio),
    ("video: 20 frames, 3 windows", lambda: frames(n=20), FPS, audio),
    ("audio: silent", frames, FPS, silent),
    ("audio: shorter than the video", frames, FPS, lambda: audio(n=1600)),
    ("audio: 10 samples", frames, FPS, lambda: audio(n=10)),
    ("audio: longer than the video (10 s)", frames, FPS, lambda: audio(n=10 * SR)),
    ("audio: shorter than a 3-window video", lambda: frames(n=20), FPS, lambda: audio(n=4000)),
    *[(f"audio: {rate} Hz", frames, FPS, (lambda r=rate: audio(n=r // 2, rate=r)))
      for rate in (8000, 11025, 16000, 22050, 44100, 48000, 96000)],
    ("audio: mono", frames, FPS, lambda: audio(channels=1)),
    ("audio: stereo", frames, FPS, lambda: audio(channels=2)),
    ("audio: 5.1 (6 channels)", frames, FPS, lambda: audio(channels=6)),
    ("fps: 23.976 (24000/1001)", frames, 24000 / 1001, audio),
    ("fps: 29.97 (30000/1001)", frames, 30000 / 1001, audio),
    ("fps: 60", frames, 60.0, audio),
    ("fps: 120", frames, 120.0, audio),
]


@pytest.mark.parametrize("make_images, fps, make_audio", [pytest.param(*row[1:], id=row[0]) for row in OK_ROWS])
def test_good_input_gives_every_frame_and_fitted_audio(model, make_images, fps, make_audio):
    images, aud = make_images(), make_audio()
    n, h, w = images.shape[:3]
    hooks = Hooks(model)
    out, fitted = run(model, images, fps, aud, hooks)

    assert out.shape == (n, h, w, 3) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    total = len(P.plan_for_codec(n, OPTIONS, 1)) * OPTIONS.steps  # every step of every window was sampled
    assert hooks.progress == [(i, total) for i in range(1, total + 1)]
    assert len(hooks.prepared) == 1

    wave, rate = aud["waveform"], aud["sample_rate"]
    want = round(n / fps * rate)
    assert fitted["sample_rate"] == rate
    assert fitted["waveform"].shape == (1, wave.shape[1], want)
    keep = min(want, wave.shape[-1])
    assert torch.equal(fitted["waveform"][..., :keep], wave[..., :keep])  # trimmed ...
    assert torch.count_nonzero(fitted["waveform"][..., keep:]) == 0  # ... or padded with zeros


@pytest.mark.parametrize("fps, want", [(24000 / 1001, 4004), (30000 / 1001, 3203), (60.0, 1600), (120.0, 800)])
def test_fitted_audio_length_at_fractional_and_high_frame_rates(model, fps, want):
    """6 frames at 16 kHz: round(6 / fps * 16000) samples, worked out by hand."""
    _, fitted = run(model, frames(), fps, audio())
    assert fitted["waveform"].shape == (1, 1, want)


# --------------------------------------------------------------------------------------------- shipped model


def test_silent_audio_closes_a_talking_mouth_with_the_shipped_model():
    """Held-out anime clip (the bench's first anime seed, 2 s at 25 fps, 64 px) whose source mouth talks, re-driven
    by all-zero audio through the node path (built-in mouth locator, DS-CFG defaults, tau 0.92, 8 steps).

    Openings are measured with the bench's estimator and compared per frame with the same clip rendered with its
    mouth drawn at a fixed opening (the renderer is a pure function of the opening), so thresholds read as
    "opening on the generator's 0..1 scale". Measured on this clip (torch 2.13, CPU):
      source: opening > 0.3 in 19 of 50 frames, > 0.5 in 15; equivalent opening max 0.895, mean 0.276
      output: equivalent opening max 0.236, mean 0.080; <= 0.25 in 50/50 frames, <= 0.1 in 32/50
              (the frames where the source mouth is open come out at ~0.2: smaller, not shut)
      excess dark area over the closed render: output / source = 0.18
      mouth-box MAE to the closed render on the 19 open frames: output 0.059, source 0.157; on the 31 frames where
              the source is shut: 0.002
      PSNR outside the mouth: 52.8 dB
    The residual opening follows the source (Pearson r 0.90 with its opening): the source lips leak through at about a
    quarter of their amplitude. At the node's default 20 steps the same clip peaks at 0.336 in one frame (mean 0.086),
    which the 0.3 bound below would refuse: it is set for the 8 steps used here.
    """
    path = WEIGHTS.default_checkpoint()
    assert path is not None, "the demo checkpoint must ship in omnisync_model/assets"
    shipped = BACKEND.OmniSyncBackend(WEIGHTS.load_checkpoint(path))
    case = next(c for c in BENCH.make_cases(SYNTH.STYLES, 1, 2.0, 25.0, 64) if c.style == "anime")
    clip, _, rate = SYNTH.make_talking_clip(case.seed, case.style, case.seconds, case.fps, case.size)
    n = clip.frames.shape[0]
    options = LS.make_options(0.92, 8, 0, 16, 2, 2.5, 1.0, 0.15, 1.5)
    out, fitted = LS.lipsync_images(shipped, clip.frames, case.fps, silent(n=32000, rate=rate), options)
    assert out.shape == clip.frames.shape and fitted["waveform"].shape == (1, 1, 32000)

    def opening(video):
        return METRICS.estimate_mouth_opening(video, clip.mouth_box)  # [F]

    def drawn(level):  # the measured opening of this clip with its mouth drawn at `level` in every frame
        return opening(SYNTH.render(clip.spec, torch.full((n,), level)))

    shut = SYNTH.render(clip.spec, torch.zeros(n))  # the same clip with its mouth closed in every frame
    source, output, closed = opening(clip.frames), opening(out), opening(shut)
    assert int((source > drawn(0.5)).sum()) >= 10  # the source really talks (15 frames)
    assert bool((output <= drawn(0.3)).all()), (output - drawn(0.3)).max()  # max 0.236: never past 0.3
    assert float((output <= drawn(0.25)).float().mean()) >= 0.9  # 100% at <= 0.25
    ratio = float((output - closed).mean() / (source - closed).mean())
    assert ratio <= 0.35, ratio  # 0.18

    # the mouth region looks like the closed mouth (not smeared or blanked), and the rest of the face is kept
    box = METRICS._box_mask(clip.mouth_box, n, *clip.frames.shape[1:3])  # [F,H,W]

    def mae_to_shut(video):  # [F] mean absolute difference to the closed render inside the mouth box
        return ((video - shut).abs().mean(-1) * box).sum((1, 2)) / box.sum((1, 2))

    talking, quiet = clip.mouth_open > 0.3, clip.mouth_open == 0
    assert int(talking.sum()) >= 10 and int(quiet.sum()) >= 10
    out_err, src_err = mae_to_shut(out), mae_to_shut(clip.frames)
    assert float(out_err[talking].mean()) <= 0.55 * float(src_err[talking].mean())  # 0.059 vs 0.157
    assert float(out_err[quiet].mean()) <= 0.01  # 0.002
    assert METRICS.psnr_outside(out, clip.frames, clip.mouth_box) >= 35.0  # 52.8 dB


# --------------------------------------------------------------------------------------------- interrupts


def _large_tensors(min_numel):
    import gc

    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter) and o.numel() >= min_numel)


def test_an_interrupt_stops_within_one_step_frees_the_buffers_and_the_next_run_works(model, reference):
    class Interrupted(Exception):
        pass

    images, aud = frames(n=20, seed=3), audio(seed=3)
    size = images.numel()  # the output buffer and every window's frames are at least this large together
    before = _large_tensors(size // 4)
    progress = []

    def check():  # also called by the mouth locator, once per 64 frames, before sampling starts
        if len(progress) == 2:
            raise Interrupted

    hooks = LS.NodeHooks(progress=lambda done, total: progress.append(done), check_interrupt=check)
    with pytest.raises(Interrupted):
        LS.lipsync_images(model, images, FPS, aud, OPTIONS, hooks=hooks)
    assert progress == [1, 2]  # stopped at the check of the third step, before finishing it
    assert _large_tensors(size // 4) == before  # nothing of the interrupted run is still alive
    ref_images, ref_audio, want_out, _ = reference
    out, _ = run(model, ref_images, FPS, ref_audio)
    assert torch.equal(out, want_out)


# --------------------------------------------------------------------------------------------- no mouth


def _landscape(n=6, h=48, w=64):
    """Sky over green hills: no face anywhere."""
    y = torch.linspace(0, 1, h).view(1, h, 1, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1)
    hills = (y > 0.6 + 0.1 * torch.sin(6 * x)).float()
    sky, grass = torch.tensor([0.5, 0.7, 1.0]), torch.tensor([0.2, 0.6, 0.2])
    return (hills * grass + (1 - hills) * sky).expand(n, h, w, 3).contiguous()


@pytest.mark.parametrize("make", [lambda: torch.zeros(6, 48, 64, 3), lambda: torch.ones(6, 48, 64, 3), _landscape],
                         ids=["black", "white", "landscape"])
def test_frames_without_a_mouth_complete_with_uniform_guidance_and_a_warning(model, make, caplog):
    images = make()
    with caplog.at_level("WARNING"):
        out, _ = run(model, images, FPS, audio())
    assert out.shape == (6, 48, 64, 3) and bool(torch.isfinite(out).all())
    assert any("no face or mouth found" in r.getMessage() and "uniform guidance" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
