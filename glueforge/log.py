"""Logging for the entry points: progress goes through ``logging``, to stderr."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("GLUEFORGE_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S", stream=sys.stderr,
        )
