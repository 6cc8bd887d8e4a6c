"""Training and evaluation: the synthetic talking-face suite, the training recipe, metrics, the benchmark and
the demo."""
