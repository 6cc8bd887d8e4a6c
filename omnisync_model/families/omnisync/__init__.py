"""The OmniSync DiT (our own family): config presets, the transformer, its audio encoder, checkpoints."""
