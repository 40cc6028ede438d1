"""Entry points: the plan behind dodo.py, and the ``glueforge`` command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from glueforge import PROJECT_ROOT, GlueforgeError


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("GLUEFORGE_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S", stream=sys.stderr,
        )


def load_plan(target: str, models: str | None, root: Path = Path.cwd()):
    """Load models.yaml from ``root`` and select ``target`` and ``models``; exit with the error on failure."""
    from glueforge.pipeline import Pipeline
    from glueforge.tasks import Plan

    configure_logging()
    root = Path(root)
    if not (root / "models.yaml").is_file():
        root = PROJECT_ROOT
    try:
        return Plan(Pipeline.load(root), target, models)
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        raise SystemExit(2) from None
