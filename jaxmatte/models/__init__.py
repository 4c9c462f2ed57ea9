"""Complete matting models (backbone + decoder + heads), registered as model families."""
