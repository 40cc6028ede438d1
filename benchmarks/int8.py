"""Benchmark: INT8 extractors against FP32, side by side in one run: extractor latency, and homography AUC on photographs.

    doit build target=cpu && doit build target=cpu_int8 && doit build target=openvino && doit build target=openvino_int8
    python benchmarks/int8.py [--pairs cpu:cpu_int8,openvino:openvino_int8] [--models ...] [--config overlay.yaml]
                              [--data ../shared/data/pairs] [--warps 3] [--repeats 15]

For each model and each FP32:INT8 pair of targets it opens the two bundles of the local store
(``artifacts/store``; build them first), and

- times each bundle's ``extractor`` graph on one photograph at the export size (the runtime's
  recorded settings, its default threads), interleaved so that drift of the machine hits both
  alike: the median of ``--repeats`` runs after 3 warm-ups, and INT8 over FP32 ("x fp32");
- matches ``--warps`` seeded homographic warps of every photograph in ``--data`` with each bundle
  (the same warps for both: ``glueforge.homography``) and reports AUC@3px and its drop;
- compares the INT8 extractor's keypoints with the FP32 one's on the photographs: the share that
  are mutual nearest neighbours within 3 px, and their descriptors' mean cosine.

``--config`` takes an overlay whose targets vary the calibration (its size, its method), for a
trade-off curve: name those targets in ``--pairs``. Nothing is asserted about speed here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import numpy as np

import glueforge
from glueforge.api import load_image
from glueforge.bench import feed
from glueforge.config import Config
from glueforge.homography import bundle_matcher, evaluate, make_warps, matched_points, shrunk
from glueforge.log import configure_logging

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GLUEFORGE_SHARED_DATA", REPO.parent / "shared" / "data")) / "pairs"


def extractor_agreement(fp32, int8, images) -> tuple[float, float]:
    """Keypoints of ``int8`` that are mutual nearest neighbours of ``fp32``'s within 3 px, and their descriptors' mean
    cosine, over ``images``."""
    shares, cosines = [], []
    for a, b in zip(fp32.extract(images), int8.extract(images)):
        distance = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=-1)
        nearest, back = distance.argmin(1), distance.argmin(0)
        mutual = (back[nearest] == np.arange(len(nearest))) & (distance.min(1) < 3.0)
        shares.append(float(mutual.mean()))
        cosines.extend((a.descriptors[mutual] * b.descriptors[nearest[mutual]]).sum(-1).tolist())
    return float(np.mean(shares)), float(np.mean(cosines))


def latency(bundles, images, repeats: int) -> list[float]:
    """Median extractor latency (ms) of each bundle on one image, interleaved."""
    runners = [b.runner("extractor") for b in bundles]
    feeds = [feed(b, "extractor", 1, images) for b in bundles]
    samples: list[list[float]] = [[] for _ in bundles]
    for _ in range(3):
        for runner, inputs in zip(runners, feeds):
            runner.infer(inputs)
    for _ in range(repeats):
        for runner, inputs, times in zip(runners, feeds, samples):
            start = time.perf_counter()
            runner.infer(inputs)
            times.append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="cpu:cpu_int8,openvino:openvino_int8")
    parser.add_argument("--models", default="disk_lightglue,aliked_lightglue,xfeat_lighterglue")
    parser.add_argument("--config", default=None, help="an overlay over models.yaml (targets that vary the calibration)")
    parser.add_argument("--data", type=Path, default=DATA, help="a directory of photographs")
    parser.add_argument("--warps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--max-size", type=int, default=640, help="photographs resized so that their longest side is at "
                        "most this (the export size's; larger ones cost time and, with every photograph's own size, memory)")
    parser.add_argument("--store", type=Path, default=REPO / "artifacts" / "store")
    args = parser.parse_args()
    configure_logging()
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    config = Config.load(REPO / "models.yaml", overlays=[args.config] if args.config else [])
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photographs = [shrunk(load_image(p), args.max_size) for p in paths]
    warps = make_warps(photographs, args.warps, seed=0)
    rows = []
    auc: dict[tuple[str, str], float] = {}  # (model, target) -> AUC@3px: an FP32 bundle in several pairs is matched once
    for model in args.models.split(","):
        version = config.model(model).version
        for pair in args.pairs.split(","):
            names = pair.split(":")
            missing = [n for n in names if not (args.store / model / version / n / "manifest.json").is_file()]
            if missing:  # not built, or not bundled because it failed its validation (its build says why)
                rows.append((model, names[0], names[1], None))
                continue
            with contextlib.ExitStack() as opened:
                bundles = [opened.enter_context(glueforge.open(args.store / model / version / n, max_size=args.max_size))
                           for n in names]
                ms = latency(bundles, photographs[:1], args.repeats)
                aucs = [auc.get((model, n)) or auc.setdefault((model, n), evaluate(
                    matched_points(bundle_matcher(b), warps), warps)["auc@3px"]) for n, b in zip(names, bundles)]
                share, cosine = extractor_agreement(bundles[0], bundles[1], photographs)
                int8 = bundles[1].manifest["prepared"]["extractor"].get("int8", {})
            rows.append((model, names[0], names[1], *ms, aucs[0], aucs[1], share, cosine,
                         int8.get("calibration", {}).get("images", "-"), int8.get("method", "-")))
    print(f"\nINT8 against FP32: extractor latency on one photograph (median of {args.repeats} interleaved runs, "
          f"{os.cpu_count()} logical CPUs); AUC@3px on {len(warps)} warps of {len(paths)} photographs of {args.data}")
    header = ("model", "fp32", "int8", "fp32 ms", "int8 ms", "x fp32", "AUC fp32", "AUC int8", "drop", "kp MNN",
              "desc cos", "calib", "method")
    print(" ".join(f"{h:>10s}" if i >= 3 else f"{h:18s}" for i, h in enumerate(header)))
    for model, fp32, int8, *measured in rows:
        if measured == [None]:
            print(f"{model:18s} {fp32:18s} {int8:18s}   no bundle in the store (not built, or failed its validation)")
            continue
        ms32, ms8, a32, a8, share, cosine, images, method = measured
        print(f"{model:18s} {fp32:18s} {int8:18s} {ms32:10.1f} {ms8:10.1f} {ms8 / ms32:9.2f}x {a32:10.3f} {a8:10.3f} "
              f"{a32 - a8:10.3f} {share:10.3f} {cosine:10.4f} {images!s:>10s} {method:>10s}")


if __name__ == "__main__":
    main()
