"""The ``glueforge`` command: pull (needs no torch) and parity (a build machine).

    glueforge pull MODEL --target T --dest DIR [--version SPEC | --channel NAME] [--check-compatibility]
    glueforge parity MODEL [--target T] [--data DIR]

Errors a user can act on print one line without a traceback and exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from glueforge import GlueforgeError
from glueforge.log import configure_logging


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
    parity = sub.add_parser("parity", help="parity of a built bundle with the upstream reference on photographs")
    parity.add_argument("model")
    parity.add_argument("--target", default="cpu")
    parity.add_argument("--data", type=Path, default=Path("../shared/data"), help="a directory with pairs/ and sequences/")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        if args.command == "parity":
            print(_parity(args.model, args.target, args.data))
            return 0
        return _pull(args)
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        return 1


def _pull(args: argparse.Namespace) -> int:
    from glueforge.pull import pull as pull_bundle
    from glueforge.store import open_store

    store_url = args.store or default_store()
    if not store_url:
        print("glueforge: no store given: --store, $GLUEFORGE_STORE or store.remote in models.yaml", file=sys.stderr)
        return 2
    path = pull_bundle(open_store(store_url, args.endpoint_url), args.model, args.target, args.dest,
                       version=args.version, channel=args.channel, check=args.check_compatibility)
    print(path)
    return 0


def _parity(model: str, target: str, data: Path) -> str:
    """The parity table of ``model``'s bundle for ``target`` (built if needed)."""
    from glueforge.graphs import Models
    from glueforge.pipeline import Pipeline
    from validation.parity import bundle_parity, table

    pipeline = Pipeline.load(Path.cwd()) if (Path.cwd() / "models.yaml").is_file() else Pipeline.load()
    bundle = pipeline.result("bundle", model, target).path
    job = pipeline.job(model, target)
    weights = {role: pipeline.fetch(name) for role, name in job.weight_names().items()}
    return table(model, bundle_parity(bundle, Models(job.settings, weights), data))


if __name__ == "__main__":
    sys.exit(main())
