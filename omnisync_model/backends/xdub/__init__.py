"""X-Dub as a pipeline backend: the reference's sampler facts (:mod:`.schedule`)."""
