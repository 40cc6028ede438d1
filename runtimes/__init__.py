"""Runtimes: one module per way of running graphs (see ``glueforge/runtime.py`` for the interface).

Modules whose name starts with ``_`` are helpers, not runtimes. Keep heavy imports (onnx,
onnxruntime, TensorRT, OpenVINO) inside functions: the registry imports every runtime module
to read its schema, also on machines that have only the pull-only install.
"""
