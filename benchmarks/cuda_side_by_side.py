"""Benchmark: cuda bundles beside kornia's upstream models in PyTorch, in one process on one NVIDIA GPU.

    python benchmarks/cuda_side_by_side.py BUNDLE [BUNDLE ...] [--runs 50] [--warmup 10] [--pairs DIR] [--out FILE]

For each bundle of a cuda target (runtimes/onnxruntime_cuda.py) and the family's unpatched upstream model (kornia,
with the weights models.yaml names, read from ``$GLUEFORGE_DOWNLOAD_CACHE``), on the bundle's validation pair
(``sample.npz``, at the bundle's static size, the same K):

- ours, pair: the ``end2end`` graph on one pair, host arrays in and out (CUDA graph replay, copies included);
- ours, pair, device buffers: the same run on what the bound device buffers hold, no copies;
- ours, frame: the ``extractor`` graph on one image, then the ``matcher`` on one pair (host arrays);
- ours, frame, device buffers;
- kornia eager fp32; eager fp16 (autocast); ``torch.compile`` fp16 (autocast; the first call's compile time is
  printed): both images' features, then the matcher.

Runs are interleaved (one of each case per round), so that drift of the GPU's clocks hits all alike; the median and
p90 of ``--runs`` rounds after ``--warmup`` are printed, and "x compile" is a case's median over torch.compile fp16's.
``--pairs DIR``: also the agreement of ours with kornia fp32 on each pair of photographs there (sorted, taken two by
two; resized to the bundle's size): the share of kornia's keypoints with a mutual nearest neighbour within 1 px in
ours (worst image) and of kornia's matches that ours reproduces. Nothing is asserted; the script prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import glueforge
from glueforge import registry
from glueforge.agreement import match_recall, mutual_nearest
from glueforge.api import load_image, preprocess
from glueforge.bench import feed
from glueforge.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def upstream_pair(pipeline: Pipeline, model: str, target: str, device: str):
    """kornia's model of ``model`` (``target``'s export settings: the same K) as one function of a pair of images
    (2, C, H, W) on ``device``: both images' features, then the matcher."""
    settings = pipeline.config.export_settings(model, target)
    weights = {role: pipeline.weight_file(name) for role, name in pipeline.weight_names(model).items()}
    x, m = settings.extractor, settings.matcher
    xf, mf = registry.family(x.family), registry.family(m.family)
    lacking = [f.__name__ for f in (xf, mf) if not hasattr(f, "upstream")]
    if lacking:
        raise SystemExit(f"glueforge: {', '.join(lacking)} give no upstream model to compare with")
    extractor = xf.upstream(x, weights["extractor"], settings).to(device).eval()
    matcher = mf.upstream(m, weights["matcher"], settings).to(device).eval()
    h, w = settings.image_size

    def run(images: torch.Tensor):
        features = xf.upstream_extract(extractor, images, x, settings)
        size = torch.tensor([images.shape[3], images.shape[2]], dtype=torch.float32, device=images.device)
        data = [{"keypoints": f["keypoints"], "descriptors": f["descriptors"], "image_size": size} for f in features]
        return features, mf.upstream_match(matcher, data[0], data[1])

    return run, (h, w)


def timed(call) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0


def measure(cases: dict[str, object], runs: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for call in cases.values():
            timed(call)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, call in cases.items():
            times[name].append(timed(call))
    return times


def side_by_side(bundle_dir: Path, pipeline: Pipeline, runs: int, warmup: int, pairs: Path | None) -> dict:
    bundle = glueforge.open(bundle_dir)
    m = bundle.manifest
    with np.load(bundle_dir / "sample.npz") as sample:
        images = [sample["image0"], sample["image1"]]
    run, size = upstream_pair(pipeline, m["model"], m["target"], "cuda")
    pair_inputs = feed(bundle, "end2end", 1, images)
    frame_inputs = feed(bundle, "extractor", 1, images), feed(bundle, "matcher", 1, images)
    end2end, extractor, matcher = bundle.runner("end2end"), bundle.runner("extractor"), bundle.runner("matcher")
    tensor = torch.from_numpy(pair_inputs["images"]).cuda()

    def frame_host():
        extractor.infer(frame_inputs[0])
        matcher.infer(frame_inputs[1])

    end2end.infer(pair_inputs)  # the device buffers now hold a pair, and a frame
    frame_host()

    def frame_device():
        extractor.run()
        matcher.run()

    def fp16():
        with torch.autocast("cuda", dtype=torch.float16):
            return run(tensor)

    compiled = torch.compile(run)

    def compiled_fp16():
        with torch.autocast("cuda", dtype=torch.float16):
            return compiled(tensor)

    with torch.inference_mode():
        compile_ms = timed(compiled_fp16)
        cases = {"ours, pair (end2end, host arrays)": lambda: end2end.infer(pair_inputs),
                 "ours, pair (end2end, device buffers)": end2end.run,
                 "ours, frame (extractor 1 + matcher 1, host arrays)": frame_host,
                 "ours, frame (device buffers)": frame_device,
                 "kornia eager fp32, pair": lambda: run(tensor),
                 "kornia eager fp16 autocast, pair": fp16,
                 "kornia torch.compile fp16, pair": compiled_fp16}
        times = measure(cases, runs, warmup)
        agreement = _agreement(bundle, run, pairs, size) if pairs is not None else None
    base = statistics.median(times["kornia torch.compile fp16, pair"])
    rows = [{"case": name, "p50_ms": round(statistics.median(t), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
             "x_compile": round(statistics.median(t) / base, 3)} for name, t in times.items()]
    bundle.close()
    return {"model": m["model"], "version": m["version"], "target": m["target"], "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "onnxruntime": m["runtime"].get("onnxruntime_cuda"), "runs": runs,
            "warmup": warmup, "compile_first_call_ms": round(compile_ms, 1), "rows": rows, "agreement": agreement}


def _agreement(bundle, run, pairs: Path, size: tuple[int, int]) -> list[dict]:
    """Ours (the runtime API's match_pair) against kornia fp32 on each pair of photographs in ``pairs``."""
    files = sorted(p for p in pairs.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rows = []
    for a, b in zip(files[0::2], files[1::2]):
        images = [_resized(load_image(p), size) for p in (a, b)]  # at the bundle's static size: its fit is the image
        prepared = [preprocess(image, bundle.colour, bundle.fit(size)) for image in images]
        ours = bundle.match_pair(*images)
        features, matched = run(torch.from_numpy(np.stack(prepared)).cuda())
        kp = [f["keypoints"].float().cpu().numpy() for f in features]
        corr = [mutual_nearest(kp[i], f.keypoints) for i, f in enumerate((ours.features0, ours.features1))]
        rows.append({"pair": f"{a.name} {b.name}",
                     "keypoint_mnn": round(min(float((c >= 0).mean()) for c in corr), 4),
                     "match_recall": round(match_recall(matched["matches"].cpu().numpy(), ours.matches, corr[0], corr[1]), 4)})
    return rows


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)) if image.shape[:2] != (h, w) else image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pairs", type=Path, help="a directory of photographs, taken two by two: agreement with kornia fp32")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("glueforge: cuda_side_by_side needs torch with CUDA and an NVIDIA GPU")
    pipeline = Pipeline.load(REPO)
    records = [side_by_side(b, pipeline, args.runs, args.warmup, args.pairs) for b in args.bundles]
    for r in records:
        print(f"\n{r['model']} {r['version']} on {r['target']}: {r['gpu']}, torch {r['torch']}, onnxruntime "
              f"{r['onnxruntime']}; median of {r['runs']} (torch.compile's first call: {r['compile_first_call_ms']:.0f} ms)")
        width = max(len(row["case"]) for row in r["rows"])
        print(f"{'case':<{width}}  {'p50 ms':>8}  {'p90 ms':>8}  {'x compile':>9}")
        for row in r["rows"]:
            print(f"{row['case']:<{width}}  {row['p50_ms']:8.2f}  {row['p90_ms']:8.2f}  {row['x_compile']:9.2f}")
        for a in r["agreement"] or []:
            print(f"  agreement with kornia fp32 on {a['pair']}: keypoints {a['keypoint_mnn']:.4f}, matches {a['match_recall']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
