"""Shared foundations: the model registry, atomic file writes, defensive GGUF reading."""
