"""ComfyUI-free adapter logic of the OmniSync nodes, one module per thing it adapts.

Nothing here imports ComfyUI, so all of it is unit-tested without a ComfyUI checkout. The node modules
(``nodes/loader.py``, ``nodes/lipsync.py`` ...) only add the ComfyUI glue: schemas, the memory manager, progress and
interrupts.

  frames    IMAGE [F,H,W,C] in 0..1 and MASK [F,H,W] -> checked float RGB frames; frame rates
  audio     AUDIO {"waveform" [B,C,N], "sample_rate"}, AUDIO_ENCODER_OUTPUT (core AudioEncoderEncode), OMNISYNC_AUDIO
  tracks    OMNISYNC_MOUTH: mouth tracks from the locator or a MASK
  codecs    VAE: a ComfyUI VAE behind the pipeline's Codec protocol
  latents   LATENT {"samples": [B,C,T,h,w] or [F,C,h,w], "omnisync_*"}: noise init and the step-by-step sampler
  windows   OMNISYNC_WINDOW: split a video into windows as a list, stitch the list back
  lipsync   the one-node path (OmniSyncLipSync)
  faces     OMNISYNC_CROP: face crop and paste-back
  video     VIDEO: the streamed file-to-file path (OmniSyncLipSyncVideo)
"""
