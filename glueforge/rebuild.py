"""``glueforge engine BUNDLE --out DIR``: rebuild a bundle's engines from the ONNX it ships.

TensorRT and TensorRT-RTX bundles carry the graph each engine was built from (``<graph>.onnx``),
the target's settings (``target_settings``), the fuse stage's metadata (``prepared``: the FP32
layers of TensorRT FP16 builds) and the I/O shapes, so the engine stage's own build runs again
from the bundle alone: on the device (TensorRT's Python builder) or on any machine
(TensorRT-RTX). For trtexec targets the manifest's ``reproduce`` also gives the trtexec line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from glueforge import GlueforgeError, registry
from glueforge.runtime import BuildContext
from glueforge.store import MANIFEST


def rebuild(bundle: Path, out: Path, graphs: Sequence[str] | None = None) -> dict[str, Path]:
    """Build the engines of ``graphs`` (default: all) of ``bundle`` into ``out``; returns graph -> engine file."""
    try:
        manifest = json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise GlueforgeError(f"{bundle}: not a bundle ({e})") from None
    runtime = registry.runtime(manifest["runtime"]["runtime"])
    chosen = list(graphs or manifest["graphs"])
    unknown = [g for g in chosen if g not in manifest["graphs"]]
    if unknown:
        raise GlueforgeError(f"{bundle}: has no graph {', '.join(unknown)}; its graphs: {', '.join(manifest['graphs'])}")
    sources = {g: Path(bundle) / f"{g}.onnx" for g in chosen}
    files = manifest["runtime"]["files"]
    if any(files[g] == f"{g}.onnx" for g in chosen) or not all(p.is_file() for p in sources.values()):
        raise GlueforgeError(f"{bundle}: its {manifest['runtime']['runtime']} engines are not built from a shipped ONNX "
                             "(onnxruntime's engine is the ONNX itself, OpenVINO's its IR): nothing to rebuild")
    if "target_settings" not in manifest:
        raise GlueforgeError(f"{bundle}: the manifest predates target_settings; rebuild the bundle with doit")
    target = runtime.Target.model_validate(manifest["target_settings"], strict=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    context = BuildContext(target_name=manifest["target"], io={g: manifest["graphs"][g] for g in chosen},
                           prepared=manifest.get("prepared") or {}, sizes=manifest["image_sizes"],
                           timing_cache_dir=out / "timing-cache", project_root=out)
    meta = runtime.build(sources, out, target, context)
    (out / "engines.json").write_text(json.dumps(meta, indent=1))
    return {g: out / meta["files"][g] for g in chosen}
