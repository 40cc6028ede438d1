"""glueforge: ahead-of-time builds of local-feature models into validated engine bundles."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class GlueforgeError(RuntimeError):
    """Base of every error a user can act on; the message says what and where.

    Entry points (``doit``, ``glueforge``) print these as one message without a traceback;
    any other exception is a bug and keeps its traceback.
    """


def open(path, trusted_keys=None, max_size=None):  # noqa: A001 - glueforge.open(bundle_dir), the runtime API's entry point
    """Open a bundle directory for running: ``extract``, ``match``, ``match_pair`` (``glueforge.api.open``), once its
    files match its manifest, and with ``trusted_keys`` (public key files) once one of them signed it; images whose
    longest side exceeds ``max_size`` are resized down to it.

    Imported by name at call time: every module imports this package, and a static import here would
    put the runtime API into the code identity of every stage.
    """
    import importlib

    return importlib.import_module("glueforge.api").open(path, trusted_keys, max_size)
