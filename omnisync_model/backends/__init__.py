"""Model families adapted to the pipeline's :class:`~omnisync_model.sampling.backend.Backend` interface, and the
registry that detects a checkpoint's family (:mod:`.registry`)."""
