"""The synthetic suite's drawing styles, and which of them training sees (``sketch`` is held out for the benchmark
and the demo)."""

STYLES = ("realistic", "cartoon", "anime", "animal", "sketch")
TRAIN_STYLES = ("realistic", "cartoon", "anime", "animal")
HELD_OUT_STYLES = tuple(s for s in STYLES if s not in TRAIN_STYLES)
