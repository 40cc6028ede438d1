"""Entry points: the plan behind dodo.py, and the ``glueforge`` command (pull needs no torch)."""

from __future__ import annotations

import argparse
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



def load_plan(target: str, models: str | None, root: Path | None = None, **options):
    """Load models.yaml from ``root`` and select ``target`` and ``models``; exit with the error on failure."""
    from glueforge.pipeline import Pipeline
    from glueforge.tasks import Plan

    configure_logging()
    root = Path(root or Path.cwd())
    if not (root / "models.yaml").is_file():
        root = PROJECT_ROOT
    try:
        return Plan(Pipeline.load(root), target, models, **options)
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def default_store() -> str | None:
    """$GLUEFORGE_STORE, else ``store.remote`` of ./models.yaml (read with PyYAML only)."""
    if os.environ.get("GLUEFORGE_STORE"):
        return os.environ["GLUEFORGE_STORE"]
    path = Path.cwd() / "models.yaml"
    if path.is_file():
        import yaml

        remote = ((yaml.safe_load(path.read_text()) or {}).get("store") or {}).get("remote")
        if remote:
            return remote.get("url") if isinstance(remote, dict) else remote
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glueforge", description="glueforge: versioned engine bundles")
    sub = parser.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="pull, verify and install a bundle")
    pull.add_argument("model")
    pull.add_argument("--target", required=True)
    which = pull.add_mutually_exclusive_group()
    which.add_argument("--version", help='a version or a specifier, e.g. ">=1.2,<2" (default: the highest)')
    which.add_argument("--channel", help="a channel such as latest or stable")
    pull.add_argument("--dest", type=Path, required=True, help="the local bundle cache")
    pull.add_argument("--store", default=None, help="s3://bucket/prefix or a directory (default: $GLUEFORGE_STORE, models.yaml)")
    pull.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: $GLUEFORGE_S3_ENDPOINT)")
    pull.add_argument("--check-compatibility", action="store_true", help="refuse a bundle this machine cannot run")
    args = parser.parse_args(argv)
    configure_logging()
    from glueforge.pull import pull as pull_bundle
    from glueforge.store import open_store

    store_url = args.store or default_store()
    if not store_url:
        print("glueforge: no store given: --store, $GLUEFORGE_STORE or store.remote in models.yaml", file=sys.stderr)
        return 2
    try:
        path = pull_bundle(open_store(store_url, args.endpoint_url), args.model, args.target, args.dest,
                           version=args.version, channel=args.channel, check=args.check_compatibility)
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
