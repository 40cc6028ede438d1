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
