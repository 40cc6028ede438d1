"""Stand-in for NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``), for tests without a GPU."""
