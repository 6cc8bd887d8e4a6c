"""Building blocks every model family shares: attention and layers, the codec protocol and the pixel codec,
the audio front end (resampling, log-mel, alignment by absolute time), safetensors checkpoint checks."""
