"""Validation: images, task metrics and the engine-versus-golden comparison."""
