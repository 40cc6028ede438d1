"""Benchmark: adaptive against fixed depth of the matcher, side by side in one run, per frame and per pair.

    doit build target=cpu config=overlays/adaptive_depth.yaml model=disk_lightglue_adaptive,aliked_lightglue_adaptive
    python benchmarks/adaptive_depth.py [--models ...] [--target cpu] [--repeats 9] [--warps 3]
                                        [--depth-confidence 0.95,0.9,0.8]

An adaptive-depth bundle (a matcher with ``depth_confidence``: ``glueforge.depth``) holds both the fixed-depth
``matcher`` graph and the step graphs, so one bundle runs both policies on the same features
(``Bundle.match(..., depth=...)``). For each model it extracts features once per image, then

- on consecutive frames (``../shared/data/sequences``: KITTI 1241x376 and TUM 640x480, each frame matched with the
  next, as a tracking loop does) and on the wide-baseline photographs (``pairs``: each file with the next), times the
  matcher per pair at both depths (median of ``--repeats`` interleaved runs) and reports the layers the adaptive run
  used, its cost against fixed depth ("x fixed", per frame: the sums over the sequence), and the share of the
  fixed-depth matches it reproduces;
- on ``--warps`` seeded homographic warps of each wide-baseline photograph (``glueforge.homography``, at most
  ``--max-size`` px) reports AUC@3px at both depths, since the real pairs have no ground truth.

``--depth-confidence`` runs the exit rule with other values than the manifest's, for a trade-off curve.

Both policies run with ``OMP_WAIT_POLICY=PASSIVE`` (idle onnxruntime threads sleep), as the step graphs' sessions always
do. Nothing is asserted here (tests/test_depth.py and the build's validation check behaviour); speed is a ratio measured
side by side on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import glueforge
from glueforge.api import load_image
from glueforge.config import Config
from glueforge.depth import ExitRule
from glueforge.homography import evaluate, make_warps, shrunk
from glueforge.log import configure_logging

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GLUEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGES = (".jpg", ".jpeg", ".png")


def images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGES)


def timed(bundle, f0, f1, repeats: int) -> tuple[float, float, int, float]:
    """Median fixed and adaptive matcher ms on one pair (interleaved), the adaptive layers, and the share of the fixed
    matches the adaptive run reproduces."""
    fixed, adaptive = bundle.match(f0, f1, depth="fixed"), bundle.match(f0, f1, depth="adaptive")  # warm-up, results
    samples: dict[str, list[float]] = {"fixed": [], "adaptive": []}
    for _ in range(repeats):
        for policy, times in samples.items():
            start = time.perf_counter()
            bundle.match(f0, f1, depth=policy)
            times.append((time.perf_counter() - start) * 1000)
    expected = {tuple(m) for m in fixed.matches.tolist()}
    reproduced = len(expected & {tuple(m) for m in adaptive.matches.tolist()}) / max(len(expected), 1)
    return statistics.median(samples["fixed"]), statistics.median(samples["adaptive"]), adaptive.layers, reproduced


def warp_auc(bundle, warps) -> dict[str, float]:
    """AUC@3px on the warps at each depth, from the same features."""
    points: dict[str, list] = {"fixed": [], "adaptive": []}
    for warp in warps:
        f0, f1 = bundle.extract([warp.image0, warp.image1])
        for policy, found in points.items():
            m = bundle.match(f0, f1, depth=policy).matches
            found.append((f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]]))
    return {policy: evaluate(found, warps)["auc@3px"] for policy, found in points.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="disk_lightglue_adaptive,aliked_lightglue_adaptive")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--config", default=str(REPO / "overlays" / "adaptive_depth.yaml"),
                        help="the overlay over models.yaml that defines the models (tests/adaptive.yaml: XFeat's)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warps", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=640, help="the warps' longest side")
    parser.add_argument("--store", type=Path, default=REPO / "artifacts" / "store")
    parser.add_argument("--depth-confidence", default=None, help="values of depth_confidence to run instead of the "
                        "manifest's (comma-separated): a trade-off curve; the bundle was validated with its own")
    args = parser.parse_args()
    # both policies' sessions wait passively: the step graphs' sessions always do (runtimes/onnxruntime.py), and a
    # spinning fixed-depth session would take the cores of the steps timed after it, and be flattered by its own spin
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configure_logging()
    config = Config.load(REPO / "models.yaml", overlays=[args.config] if args.config else [])
    groups = {name: images_in(args.data / "sequences" / name) for name in ("kitti", "tum")}
    wide = images_in(args.data / "pairs")
    rows, aucs = [], {}
    for model in args.models.split(","):
        directory = args.store / model / config.model(model).version / args.target
        if not (directory / "manifest.json").is_file():
            print(f"{model}: no bundle at {directory} (build it first: doit build target={args.target} "
                  f"config={args.config} model={model})")
            continue
        with glueforge.open(directory) as bundle:
            if bundle.exit_rule is None:
                print(f"{model}: built at fixed depth (no depth_confidence); nothing to compare")
                continue
            features = {group: bundle.extract([load_image(p) for p in paths]) for group, paths in {**groups, "wide": wide}.items()}
            warps = make_warps([shrunk(load_image(p), args.max_size) for p in wide], args.warps, seed=0)
            values = [float(v) for v in args.depth_confidence.split(",")] if args.depth_confidence else [None]
            for value in values:
                if value is not None:
                    bundle.exit_rule = ExitRule(value, bundle.exit_rule.thresholds)
                label = f"{model} {bundle.exit_rule.depth_confidence:g}"
                for group, paths in {**groups, "wide": wide}.items():
                    step = 1 if group != "wide" else 2  # frames: each with the next; photographs: as the pairs they are
                    for i in range(0, len(paths) - 1, step):
                        rows.append((label, group, paths[i].name,
                                     *timed(bundle, features[group][i], features[group][i + 1], args.repeats)))
                aucs[label] = (warp_auc(bundle, warps), len(warps), bundle.exit_rule)
    print(f"\nAdaptive against fixed depth on {args.target}: matcher ms per pair (median of {args.repeats} interleaved "
          f"runs, {os.cpu_count()} logical CPUs), layers the adaptive run used, fixed-depth matches it reproduced")
    header = ("model depth_confidence", "data", "pair", "fixed ms", "adapt ms", "x fixed", "layers", "reproduced")
    print(f"{header[0]:31s} {header[1]:6s} {header[2]:22s}" + "".join(f"{h:>11s}" for h in header[3:]))
    for model, group, name, fixed, adaptive, layers, reproduced in rows:
        print(f"{model:31s} {group:6s} {name[:22]:22s} {fixed:11.1f} {adaptive:11.1f} {adaptive / fixed:10.2f}x "
              f"{layers:11d} {reproduced:11.3f}")
    print("\nPer frame (the sums over each sequence) and over the wide-baseline pairs:")
    for model in dict.fromkeys(r[0] for r in rows):
        layers_total = aucs[model][2].layers
        for group in ("kitti", "tum", "wide"):
            chosen = [r for r in rows if r[0] == model and r[1] == group]
            if chosen:
                fixed, adaptive = sum(r[3] for r in chosen), sum(r[4] for r in chosen)
                print(f"{model:31s} {group:6s} {len(chosen)} pairs: {adaptive / fixed:.2f}x fixed, layers "
                      f"{np.mean([r[5] for r in chosen]):.1f} of {layers_total}, reproduced min "
                      f"{min(r[6] for r in chosen):.3f} mean {np.mean([r[6] for r in chosen]):.3f}")
        for group in (("kitti", "tum"),):
            chosen = [r for r in rows if r[0] == model and r[1] in group]
            fixed, adaptive = sum(r[3] for r in chosen), sum(r[4] for r in chosen)
            print(f"{model:31s} frames {len(chosen)} pairs: {adaptive / fixed:.2f}x fixed, layers "
                  f"{np.mean([r[5] for r in chosen]):.1f} of {layers_total} (KITTI and TUM)")
        auc, count, rule = aucs[model]
        print(f"{model:31s} AUC@3px on {count} warps of the wide-baseline photographs: fixed {auc['fixed']:.3f}, adaptive "
              f"{auc['adaptive']:.3f} (difference {auc['adaptive'] - auc['fixed']:+.3f})")


if __name__ == "__main__":
    main()
