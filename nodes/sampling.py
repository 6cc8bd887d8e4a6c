"""OmniSyncNoiseInit and OmniSyncSampler: the modular path (progressive init, then DS-CFG guided Euler)."""

from __future__ import annotations

from comfy_api.latest import io

from ..omnisync_model.sampling.guidance import DSCFG
from ..omnisync_model.sampling.options import LipSyncOptions
from .adapters.codecs import VAECodec
from .adapters.latents import noise_latent, sample_latent, sampler_inputs
from .runtime import output_device, prepare_model, progress_hooks
from .types import CATEGORY, OmniAudio, OmniModel, OmniMouth, OmniWindow

_DEFAULTS = LipSyncOptions()
_GUIDANCE = DSCFG()
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def tau_input() -> io.Float.Input:
    return io.Float.Input("tau", default=_DEFAULTS.tau, min=0.01, max=1.0, step=0.01,
                          tooltip="Progressive init: sampling starts from (1 - tau) * source + tau * noise at "
                                  "sigma = tau. Lower keeps more of the source video (identity, pose); 1 starts "
                                  "from pure noise.")


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Noise seed. Noise of each latent frame depends only on the seed and the frame's "
                                "position in the video, so overlapping windows share it.")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=_DEFAULTS.steps, min=1, max=200,
                        tooltip="Solver steps from sigma = tau down to 0 (the default solver, AB2, runs the model "
                                "once per step; the unconditional branch only on steps where DS-CFG needs it).")


def guidance_inputs() -> list:
    """DS-CFG widgets: w_peak, w_base, radius, gamma."""
    return [
        io.Float.Input("w_peak", default=_GUIDANCE.w_peak, min=1.0, max=20.0, step=0.1,
                       tooltip="DS-CFG: audio guidance weight at the mouth centre at the first step "
                               "(1 = no guidance)."),
        io.Float.Input("w_base", default=_GUIDANCE.w_base, min=0.0, max=20.0, step=0.1,
                       tooltip="DS-CFG: guidance weight far from the mouth (must not exceed w_peak); the "
                               "effective weight never drops below 1."),
        io.Float.Input("radius", default=_GUIDANCE.radius, min=0.01, max=2.0, step=0.01,
                       tooltip="DS-CFG: width (sigma) of the Gaussian around the mouth, as a fraction of the "
                               "frame's shorter side."),
        io.Float.Input("gamma", default=_GUIDANCE.gamma, min=0.0, max=10.0, step=0.05,
                       tooltip="DS-CFG: temporal decay; the weight falls as (sigma / tau)^gamma over the steps "
                               "(0 = constant)."),
    ]


def guidance_from(w_peak: float, w_base: float, radius: float, gamma: float) -> DSCFG:
    return DSCFG(w_peak=float(w_peak), w_base=float(w_base), radius=float(radius), gamma=float(gamma))


def window_input() -> OmniWindow.Input:
    return OmniWindow.Input("window", optional=True,
                            tooltip="One window from OmniSyncWindowSplit: noise, audio and mouth track are taken at "
                                    "that window's absolute frames, exactly as OmniSyncLipSync does.")


class OmniSyncNoiseInit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncNoiseInit",
            display_name="OmniSync Noise Init",
            category=CATEGORY,
            description="Progressive noise initialisation (OmniSync): mixes the source latent with seeded noise, "
                        "(1 - tau) * source + tau * noise. The result remembers tau and the seed for "
                        "OmniSyncSampler.",
            inputs=[
                io.Latent.Input("source", tooltip="Latent of the source video (VAEEncode with the model's VAE)."),
                tau_input(),
                seed_input(),
                io.Vae.Input("vae", optional=True,
                             tooltip="The VAE that encoded the source, only to read its temporal compression "
                                     "(video VAEs pack several frames per latent frame). Without it one latent "
                                     "frame is one video frame."),
                window_input(),
                OmniModel.Input("model", optional=True,
                                tooltip="Optional: the model whose own noise rule to use (some families repeat one "
                                        "noise frame over the window). Without it, noise is drawn per frame."),
            ],
            outputs=[io.Latent.Output("noised", display_name="noised")],
        )

    @classmethod
    def execute(cls, source, tau: float, seed: int, vae=None, window=None, model=None) -> io.NodeOutput:
        tf = VAECodec(vae).temporal_factor if vae is not None else 1
        backend = model.model.backend if model is not None else None
        out = noise_latent(source, tau, seed, tf, window=window, backend=backend)
        out["samples"] = out["samples"].to(output_device())
        return io.NodeOutput(out)


class OmniSyncSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncSampler",
            display_name="OmniSync Sampler",
            category=CATEGORY,
            description="Samples the lip-synced latent from a noised latent (OmniSyncNoiseInit) with "
                        "Dynamic Spatiotemporal CFG around the mouth. Works on the whole latent at once: for long "
                        "videos split them with OmniSyncWindowSplit (this node then runs once per window) and "
                        "join the decoded windows with OmniSyncWindowStitch, or use OmniSyncLipSync.",
            inputs=[
                OmniModel.Input("model"),
                OmniAudio.Input("audio", tooltip="From OmniSyncAudioEncode, for the same (whole) video."),
                io.Latent.Input("noised", tooltip="From OmniSyncNoiseInit (carries tau and the seed)."),
                io.Latent.Input("source", tooltip="The clean source latent that was noised."),
                OmniMouth.Input("mouth", optional=True,
                                tooltip="Mouth track from OmniSyncMouthRegion (of the whole video); guidance peaks "
                                        "there. Without it guidance is uniform over the frame."),
                steps_input(),
                *guidance_inputs(),
                window_input(),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def execute(cls, model, audio, noised, source, steps: int, w_peak: float, w_base: float, radius: float,
                gamma: float, mouth=None, window=None) -> io.NodeOutput:
        inputs = sampler_inputs(noised, source, audio, window)
        backend = model.model.backend
        tokens = inputs.source.shape[2] * inputs.source.shape[3] * inputs.source.shape[4]
        backend = prepare_model(model, tokens // max(1, backend.patch_size ** 2))
        progress, check = progress_hooks(steps)

        def on_step(done: int) -> None:
            check()
            progress(done, steps)

        options = LipSyncOptions(steps=int(steps), guidance=guidance_from(w_peak, w_base, radius, gamma))
        out = sample_latent(backend, audio, inputs, steps, options, mouth, on_step=on_step, window=window)
        out["samples"] = out["samples"].to(output_device())
        return io.NodeOutput(out)
