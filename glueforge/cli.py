"""The ``glueforge`` command: pull, run, time and report bundles (no torch); parity (a build machine).

    glueforge pull MODEL --target T --dest DIR [--version SPEC | --channel NAME] [--check-compatibility]
    glueforge infer BUNDLE IMAGE0 [IMAGE1] [--out matches.png]    keypoints, matches, inliers and time; a picture
               [--max-size N] [--min-score S] [--geometry fundamental|homography|none]
    glueforge infer BUNDLE --self-test                            the bundle's sample against what it recorded
    glueforge bench BUNDLE [BUNDLE ...] [--graphs G,G] [--batch 1,2,4] [--warmup N] [--runs N | --seconds S]
                    [--sequence DIR] [--json] [--out FILE]        latency, throughput, peak memory
    glueforge report STORE [--out FILE]                           index page of every bundle in a local store
    glueforge engine BUNDLE --out DIR [--graph G]                 rebuild a bundle's engines from its ONNX
    glueforge evaluate BUNDLE [--images DIR] [--warps N] [--seed S]  homography accuracy on your own images
    glueforge verify BUNDLE                                       every file against the manifest's sha256
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


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and exit status 2 (argparse prints the whole usage first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = f"count >= {minimum}"
    return parse


def _number(what: str, valid, must: str):
    """An argument type: a float that ``valid`` accepts; ``what`` and ``must`` word the one-line refusal."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text} is not {must}")
        return value

    parse.__name__ = what
    return parse


_seconds = _number("a number of seconds", lambda v: 0 < v < float("inf"), "a positive number of seconds")
_score = _number("a number", lambda v: 0.0 <= v <= 1.0, "a match score between 0 and 1")


def _batches(text: str) -> list[int]:
    values = [b.strip() for b in text.split(",") if b.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no batch size")
    return [_count(1)(b) for b in values]


def _existing(kind: str):
    def parse(text: str) -> Path:
        path = Path(text)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text}: no such {kind}")
        if (kind == "directory") != path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: not a {kind}")
        return path

    parse.__name__ = kind
    return parse


def _writable_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no directory {path.parent} to write it in")
    return path


def _store_settings() -> dict:
    """``store`` of ./models.yaml, read with PyYAML only (the pull-only install has no glueforge.config)."""
    path = Path.cwd() / "models.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        store = (yaml.safe_load(path.read_text()) or {}).get("store") or {}
    except (yaml.YAMLError, AttributeError) as e:
        raise GlueforgeError(f"{path}: not a readable models.yaml ({e})") from None
    return store if isinstance(store, dict) else {}


def default_store() -> str | None:
    """$GLUEFORGE_STORE, else ``store.remote`` of ./models.yaml."""
    if os.environ.get("GLUEFORGE_STORE"):
        return os.environ["GLUEFORGE_STORE"]
    remote = _store_settings().get("remote")
    if remote:
        return remote.get("url") if isinstance(remote, dict) else remote
    return None


def trust_files(given: list[Path] | None) -> list[Path]:
    """The trusted public key files: --trust KEY (repeatable), else $GLUEFORGE_TRUSTED_KEYS, else
    ``store.trusted_keys`` of ./models.yaml; empty: no signature required."""
    from glueforge import signing

    return signing.trust_paths(given) or [Path(p) for p in _store_settings().get("trusted_keys") or []]


def trusted_keys(given: list[Path] | None) -> dict:
    from glueforge import signing

    return signing.trusted(trust_files(given))


def build_parser() -> Parser:
    parser = Parser(prog="glueforge", description="glueforge: versioned engine bundles")
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
    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for signing manifests")
    keygen.add_argument("--out", type=Path, required=True, help="a directory: glueforge.key and glueforge.pub")
    infer = sub.add_parser("infer", help="run a bundle on images: counts, time, and a picture of the matches")
    infer.add_argument("bundle", type=_existing("directory"))
    infer.add_argument("images", type=_existing("file"), nargs="*", help="one image (extractor-only models) or a pair")
    infer.add_argument("--out", type=_writable_file, help="write the picture of the matches (or keypoints) here")
    infer.add_argument("--self-test", action="store_true", help="run the bundle's sample; compare with what it recorded")
    infer.add_argument("--max-size", type=_count(0), metavar="N",
                       help="resize images whose longest side exceeds N px, keypoints in the original pixels "
                            "(0: full size; default: 1024 on CPU runtimes, else full size)")
    infer.add_argument("--min-score", type=_score, default=0.0, help="keep the matches scoring at least this (0..1)")
    infer.add_argument("--geometry", choices=["fundamental", "homography", "none"],
                       help="count the inliers of this robust fit (OpenCV USAC; default: fundamental where OpenCV is "
                            "installed)")
    bench = sub.add_parser("bench", help="latency, throughput and peak memory of a bundle's graphs")
    bench.add_argument("bundles", type=_existing("directory"), nargs="+", metavar="bundle")
    bench.add_argument("--graphs", help="comma-separated (default: every graph of the bundle but adaptive depth's step "
                       "graphs, which the 'matcher adaptive' row of the matcher times)")
    bench.add_argument("--batch", type=_batches, default=[1], help="comma-separated batch sizes: pairs, or images for the extractor")
    bench.add_argument("--warmup", type=_count(0), default=3)
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=_count(1), help="exactly this many timed runs per row")
    budget.add_argument("--seconds", type=_seconds, default=10.0, help="per row: until stable, or this long (default 10)")
    bench.add_argument("--frame", action="store_true", help="also time one frame at engine level: the extractor on 1 "
                       "image, then the matcher on 1 pair")
    bench.add_argument("--sequence", type=_existing("directory"), help="a directory of frames: time the tracking loop on them")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.add_argument("--max-size", type=_count(1), metavar="N", help="--sequence: resize frames whose longest side exceeds N px")
    bench.add_argument("--out", type=_writable_file, help="also write the JSON here")
    report = sub.add_parser("report", help="an index page of every bundle in a local store")
    report.add_argument("store", type=_existing("directory"))
    report.add_argument("--out", type=_writable_file, help="default: STORE/index.html")
    engine = sub.add_parser("engine", help="rebuild a bundle's engines from the ONNX it ships (TensorRT, TensorRT-RTX)")
    engine.add_argument("bundle", type=_existing("directory"))
    engine.add_argument("--out", type=Path, required=True)
    engine.add_argument("--graph", action="append", help="only this graph (repeatable)")
    evaluate = sub.add_parser("evaluate", help="homography accuracy of a bundle on synthetic warps of your images")
    evaluate.add_argument("bundle", type=_existing("directory"))
    evaluate.add_argument("--images", type=_existing("directory"), help="a directory of photographs (default: the bundle's sample images)")
    evaluate.add_argument("--warps", type=_count(1), default=3, help="seeded warps per image (default 3)")
    evaluate.add_argument("--seed", type=_count(0), default=0)
    evaluate.add_argument("--max-size", type=_count(1), metavar="N", help="resize images whose longest side exceeds N px")
    verify = sub.add_parser("verify", help="check every file of a bundle against its manifest's sha256, and its signature")
    verify.add_argument("bundle", type=_existing("directory"))
    parity = sub.add_parser("parity", help="parity of a built bundle with the upstream reference on photographs")
    parity.add_argument("model")
    parity.add_argument("--target", default="cpu")
    parity.add_argument("--data", type=_existing("directory"), default=Path("../shared/data"), help="a directory with pairs/ and sequences/")
    for command in (pull, infer, bench, evaluate, verify):
        command.add_argument("--trust", type=_existing("file"), action="append", metavar="PUBKEY",
                             help="require a manifest signed by this public key (repeatable; default "
                                  "$GLUEFORGE_TRUSTED_KEYS, store.trusted_keys of models.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if args.command == "parity":
            print(_parity(args.model, args.target, args.data))
            return 0
        return {"pull": _pull, "infer": _infer, "bench": _bench, "report": _report, "engine": _engine,
                "evaluate": _evaluate, "verify": _verify, "keygen": _keygen}[args.command](args)
    except GlueforgeError as e:  # an error the user can act on: one line, status 2
        print(f"glueforge: {e}", file=sys.stderr)
        return 2


def _pull(args: argparse.Namespace) -> int:
    from glueforge.pull import pull as pull_bundle
    from glueforge.store import open_store

    store_url = args.store or default_store()
    if not store_url:
        print("glueforge: no store given: --store, $GLUEFORGE_STORE or store.remote in models.yaml", file=sys.stderr)
        return 2
    path = pull_bundle(open_store(store_url, args.endpoint_url), args.model, args.target, args.dest,
                       version=args.version, channel=args.channel, check=args.check_compatibility,
                       trusted_keys=trusted_keys(args.trust))
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    import time

    from glueforge.verify import verify_bundle

    started = time.perf_counter()
    manifest, size, signer = verify_bundle(args.bundle, trusted_keys(args.trust))
    signed = f"; manifest signed by trusted key {signer}" if signer else "; signature not checked (no trusted key)"
    print(f"{args.bundle}: {len(manifest['files'])} files ({size / 1e6:.1f} MB) match the manifest{signed} "
          f"(checked in {(time.perf_counter() - started) * 1e3:.0f} ms)")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from glueforge import signing

    private, public = signing.keygen(args.out)
    kid = signing.key_id(signing.load_public(public))
    print(f"{kid}\nprivate key (keep it secret; publish with signing_key=): {private}\npublic key (pull with --trust): {public}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    import time

    import glueforge
    from glueforge.api import load_image
    from glueforge.draw import keypoints_picture, matches_picture, save

    with glueforge.open(args.bundle, trust_files(args.trust)) as bundle:
        m = bundle.manifest
        if args.self_test:
            from glueforge.selftest import self_test

            result = self_test(bundle)
            print(result.table())
            return 0 if result.passed else 1
        if not 1 <= len(args.images) <= 2:
            raise GlueforgeError("give IMAGE0 [IMAGE1], or --self-test")
        bundle.max_size = bundle.default_max_size if args.max_size is None else (args.max_size or None)
        images = [load_image(p) for p in args.images]
        paired = len(images) == 2 and bundle.has_matcher
        run = (lambda: bundle.match_pair(*images)) if paired else (lambda: bundle.extract(images))
        t0 = time.perf_counter()
        run()  # the first call loads the engines
        t1 = time.perf_counter()
        result = run()
        t2 = time.perf_counter()
        fits = [bundle.fit(image.shape[:2]) for image in images]
        name = f"{m['model']} {m['version']} on {m['target']}"
        ms = (t2 - t1) * 1000
        sizes = " + ".join(f"{f.size[1]}x{f.size[0]}" for f in fits) + " px"
        if any(f.resized for f in fits):
            sizes += ", run at " + " + ".join(f"{f.content[1]}x{f.content[0]}" for f in fits)
        if paired:
            keep = result.scores >= args.min_score
            matches, scores = result.matches[keep], result.scores[keep]
            counts = (f"{len(result.features0)} + {len(result.features1)} keypoints, {len(matches)} matches"
                      + (f" (score >= {args.min_score:g})" if args.min_score else ""))
            mask, fitted = _inliers(args.geometry, result.features0.keypoints[matches[:, 0]],
                                    result.features1.keypoints[matches[:, 1]])
            if mask is not None:
                counts += f", {int(mask.sum())} inliers ({fitted})"
            lines = [f"{name}   {sizes}",
                     f"{len(matches)} matches" + (f", {int(mask.sum())} inliers of a {args.geometry or 'fundamental'} fit"
                                                  if mask is not None else "") + f"   {ms:.0f} ms per pair"]
            picture = matches_picture(images[0], images[1], result.features0.keypoints, result.features1.keypoints,
                                      matches, scores, lines, mask)
        else:
            counts = " + ".join(str(len(f)) for f in result) + " keypoints"
            picture = keypoints_picture(images[0], result[0].keypoints,
                                        [f"{name}   {sizes}", f"{len(result[0])} keypoints   {ms:.0f} ms"])
        print(f"{name}: {counts}; {ms:.1f} ms (the first call, which loads the engines: {(t1 - t0) * 1000:.1f} ms)")
        if bundle.max_size:
            print(f"input: {sizes}; images larger than {bundle.max_size} px on their longest side are resized "
                  + ("(the default on this runtime; --max-size 0: full size)" if args.max_size is None else "(--max-size)"))
        elif fits and any(f.resized for f in fits):
            print(f"input: {sizes} (resized to fit the engine's shape profile)")
        if paired and mask is None:
            print("inliers: not counted" + (" (OpenCV is not installed: pip install 'glueforge[opencv]')"
                                            if args.geometry is None else ""))
    if args.out:
        save(picture, args.out)
        print(f"wrote {args.out}")
    return 0


def _inliers(geometry: str | None, points0, points1):
    """The inlier mask of the matched points and what was fitted; (None, None) for --geometry none, or by default
    where OpenCV is not installed."""
    import importlib.util

    from glueforge.geometry import Geometry, describe, inliers

    if geometry == "none" or (geometry is None and importlib.util.find_spec("cv2") is None):
        return None, None
    chosen = Geometry(geometry or "fundamental")
    return inliers(points0, points1, chosen), describe(chosen)


def _bench(args: argparse.Namespace) -> int:
    import json

    import glueforge
    from glueforge.bench import Budget, bench, floor_rate, report, sequence, table

    budget = Budget(warmup=args.warmup, runs=args.runs, seconds=args.seconds)
    batches = args.batch
    graphs = [g.strip() for g in args.graphs.split(",")] if args.graphs else None
    records = []
    for path in args.bundles:
        with glueforge.open(path, trust_files(args.trust), args.max_size) as bundle:
            rate = floor_rate(bundle)
            rows = bench(bundle, graphs, batches, budget, rate=rate, frame=args.frame)
            if args.sequence:
                frames = sorted(p for p in args.sequence.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                rows += sequence(bundle, frames, budget)
            records.append(report(bundle, rows, budget, args.sequence, rate))
            if not args.json:
                m = bundle.manifest
                where = records[-1]["machine"]
                gpu = f", {where['gpu']}" if where.get("gpu") else ""
                print(f"{m['model']} {m['version']} on {m['target']} ({where['processor']}, {where['cores']} logical CPUs{gpu})")
                print(table(rows))
                if rate is not None:
                    print(f"x floor: p50 over the graph's FLOPs at {rate['gflops']:.1f} GFLOP/s, the rate of an "
                          f"{rate['matmul']} product measured now ({rate['measured_with']})")
    text = json.dumps(records[0] if len(records) == 1 else records, indent=1)
    if args.json:
        print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from glueforge.report import store_index

    if not args.store.is_dir():
        raise GlueforgeError(f"{args.store}: no such store directory")
    out = args.out or args.store / "index.html"
    out.write_text(store_index(args.store, out))
    print(out)
    return 0


def _engine(args: argparse.Namespace) -> int:
    from glueforge.rebuild import rebuild

    for name, path in rebuild(args.bundle, args.out, args.graph).items():
        print(f"{name}: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    import glueforge
    from glueforge.api import load_image
    from glueforge.homography import ESTIMATOR, bundle_matcher, evaluate, make_warps, matched_points

    with glueforge.open(args.bundle, trust_files(args.trust), args.max_size) as bundle:
        if args.images:
            paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not paths:
                raise GlueforgeError(f"{args.images}: no .png or .jpg images")
            images, source = [load_image(p) for p in paths], f"{len(paths)} images of {args.images}"
        else:
            with np.load(bundle.directory / "sample.npz") as sample:
                images, source = [sample["image0"], sample["image1"]], "the bundle's sample images"
        warps = make_warps(images, args.warps, args.seed)
        result = evaluate(matched_points(bundle_matcher(bundle), warps), warps)
        m = bundle.manifest
    print(f"{m['model']} {m['version']} on {m['target']}: {len(warps)} warps ({args.warps} per image, seed {args.seed}) of "
          f"{source}; {ESTIMATOR}")
    header = f"{'':28s} {'AUC@1px':>8s} {'AUC@3px':>8s} {'AUC@5px':>8s} {'precision@3px':>14s} {'matches':>8s}"
    rows = [("this machine, your images", result)]
    built = (m.get("validation") or {}).get("homography")
    if built:
        rows += [("at build: engine", built["engine"]), ("at build: reference", built["reference"])]
    print(header)
    for name, r in rows:
        print(f"{name:28s} {r['auc@1px']:8.3f} {r['auc@3px']:8.3f} {r['auc@5px']:8.3f} {r['precision@3px']:14.3f} "
              f"{r['matches']:8.0f}")
    if built:
        print(f"(at build: {built['warps']} warps of {built['images']})")
    return 0


def _parity(model: str, target: str, data: Path) -> str:
    """The parity table of ``model``'s bundle for ``target`` (built if needed)."""
    from glueforge.graphs import Models
    from glueforge.pipeline import Pipeline
    from glueforge.validation.parity import bundle_parity, table

    pipeline = Pipeline.load(Path.cwd()) if (Path.cwd() / "models.yaml").is_file() else Pipeline.load()
    pipeline.hold()  # it may build: one build at a time per checkout
    bundle = pipeline.result("bundle", model, target).path
    job = pipeline.job(model, target)
    weights = {role: pipeline.fetch(name) for role, name in job.weight_names().items()}
    return table(model, bundle_parity(bundle, Models(job.settings, weights), data))


if __name__ == "__main__":
    sys.exit(main())
