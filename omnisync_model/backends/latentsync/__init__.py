"""LatentSync / MuseTalk backend: the DDIM sampler mapped exactly onto the pipeline's flow convention
(:mod:`.schedule`)."""
