"""Media: video and audio files (PyAV), face regions (crop / paste-back), the weight-free mouth locator,
streamed frame sources and the file-to-file lip-sync path."""
