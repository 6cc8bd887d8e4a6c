"""OmniSyncNoiseInit and OmniSyncSampler: the modular path (progressive init, then DS-CFG guided Euler)."""

from __future__ import annotations

from comfy_api.latest import io

from ..omnisync_model.guidance import DSCFG
from ..omnisync_model.pipeline import LipSyncOptions
from .adapters import VAECodec, noise_latent, sample_latent, sampler_inputs
from .runtime import output_device, prepare_model, progress_hooks
from .types import CATEGORY, OmniAudio, OmniModel, OmniMouth

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
                        tooltip="Euler steps from sigma = tau down to 0.")


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
            ],
            outputs=[io.Latent.Output("noised", display_name="noised")],
        )

    @classmethod
    def execute(cls, source, tau: float, seed: int, vae=None) -> io.NodeOutput:
        tf = VAECodec(vae).temporal_factor if vae is not None else 1
        out = noise_latent(source, tau, seed, tf)
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
                        "Dynamic Spatiotemporal CFG around the mouth. Works on the whole clip at once; use "
                        "OmniSyncLipSync for long videos (it works window by window).",
            inputs=[
                OmniModel.Input("model"),
                OmniAudio.Input("audio", tooltip="From OmniSyncAudioEncode, for the same video."),
                io.Latent.Input("noised", tooltip="From OmniSyncNoiseInit (carries tau and the seed)."),
                io.Latent.Input("source", tooltip="The clean source latent that was noised."),
                OmniMouth.Input("mouth", optional=True,
                                tooltip="Mouth track from OmniSyncMouthRegion; guidance peaks there. Without it "
                                        "guidance is uniform over the frame."),
                steps_input(),
                *guidance_inputs(),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def execute(cls, model, audio, noised, source, steps: int, w_peak: float, w_base: float, radius: float,
                gamma: float, mouth=None) -> io.NodeOutput:
        inputs = sampler_inputs(noised, source, audio)
        tokens = inputs.source.shape[2] * inputs.source.shape[3] * inputs.source.shape[4]
        omni = prepare_model(model, tokens // max(1, omni_patch(model) ** 2))
        progress, check = progress_hooks(steps)

        def on_step(done: int) -> None:
            check()
            progress(done, steps)

        out = sample_latent(omni, audio, inputs, steps, guidance_from(w_peak, w_base, radius, gamma), mouth,
                            on_step=on_step)
        out["samples"] = out["samples"].to(output_device())
        return io.NodeOutput(out)


def omni_patch(patcher) -> int:
    return patcher.model.omnisync.config.patch_size
