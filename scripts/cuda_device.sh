#!/usr/bin/env bash
# The cuda target's device steps (runtimes/onnxruntime_cuda.py) on a machine with an NVIDIA GPU, in a clone of the
# commit that a hand-off names. On any machine first: doit handoff target=cuda model=... dest=DIR; carry DIR over.
#
#     scripts/cuda_device.sh HANDOFF
#
# 1. check: this clone is at the hand-off's commit, and nvidia-smi sees a GPU; else one line, exit 2;
# 2. install: a venv without torch (.venv-cuda) with the cuda extra (onnxruntime-gpu). WHEELS=DIR installs from a
#    folder of wheels and no index, for a machine that reaches none;
# 3. check: onnxruntime's CUDA provider loads and sees the GPU; else one line saying what is missing, exit 2;
# 4. build: the hand-off's steps, then per model the engine (each node's placement read from onnxruntime's profile:
#    all on the GPU, or the build stops naming the ops; CUDA graph capture), validation on the GPU (polygraphy parity
#    at the FP16 tolerances, the task metrics against kornia's FP32 references, the homography gate), the benchmark
#    and the bundle, into artifacts/store (publish with doit publish target=cuda store=...);
# 5. bench: each bundle per pair (end2end) and per frame (extractor 1 image + matcher 1 pair), p50 and p90, 50 runs;
# 6. side by side in one process with kornia's torch.compile (benchmarks/cuda_side_by_side.py), when WEIGHTS=DIR names
#    the weights (a laptop's artifacts/downloads) and REFERENCE_PYTHON (default python3) has torch with CUDA: a venv
#    .venv-side over it gets kornia and onnxruntime-gpu; PAIRS=DIR adds the agreement with kornia fp32 on the
#    photographs there, taken two by two (a copy of ../shared/data/pairs).
# What it prints is also written under OUT (default artifacts/cuda-device).
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/handoff.json" ]; then
    why="no directory given"
    [ $# -ge 1 ] && why="$1 has no handoff.json"
    echo "glueforge: usage: scripts/cuda_device.sh HANDOFF, the directory that doit handoff target=cuda dest=HANDOFF wrote ($why)" >&2
    exit 2
fi
HANDOFF=$(cd "$1" && pwd)
export HANDOFF
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/cuda-device}
VENV=${VENV:-.venv-cuda}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1

pip_install() {  # pip_install PYTHON ARGS...: from WHEELS alone where it is set
    local python=$1; shift
    if [ -n "${WHEELS:-}" ]; then "$python" -m pip install -q --no-index --find-links "$WHEELS" "$@"
    else "$python" -m pip install -q "$@"; fi
}

echo "== 1. check the clone and the GPU"
COMMIT=$(python3 -c 'import json, os; print(json.load(open(os.environ["HANDOFF"] + "/handoff.json"))["commit"] or "")')
if [ -n "$COMMIT" ] && [ "$(git rev-parse HEAD 2>/dev/null)" != "${COMMIT%-dirty}" ]; then
    echo "glueforge: $HANDOFF was made at commit ${COMMIT%-dirty}; this clone is at $(git rev-parse HEAD 2>/dev/null || echo 'no commit'): git checkout ${COMMIT%-dirty} first" >&2
    exit 2
fi

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "glueforge: the cuda target cannot run here: no NVIDIA GPU was found (nvidia-smi)" >&2
    exit 2
fi

echo "== 2. install ($VENV)"
if [ ! -x "$VENV/bin/doit" ]; then
    python3 -m venv "$VENV"
    pip_install "$VENV/bin/python" -e ".[cuda]"
fi

echo "== 3. check onnxruntime's CUDA provider"
"$VENV/bin/python" -m glueforge.runtimes.onnxruntime_cuda

echo "== 4. build"
read -r MODELS BUILD < <("$VENV/bin/python" - <<'PY'
import json, os
notes = json.load(open(os.path.join(os.environ["HANDOFF"], "handoff.json")))
build = next(c for c in notes["commands"] if " doit build " in f" {c} ")
print(",".join(f"{m}/{v}" for m, v in notes["models"].items()), build)
PY
)
TARGET=$("$VENV/bin/python" -c 'import json,os; print(json.load(open(os.environ["HANDOFF"] + "/handoff.json"))["target"])')
if [ -f "$HANDOFF/models.lock" ]; then cp "$HANDOFF/models.lock" models.lock; fi  # weights trusted on first use
(. "$VENV/bin/activate" && eval "$BUILD")

echo "== 5. bench"
BUNDLES=()
for mv in ${MODELS//,/ }; do
    bundle="artifacts/store/$mv/$TARGET"
    BUNDLES+=("$bundle")
    "$VENV/bin/glueforge" bench "$bundle" --frame --warmup 10 --runs 50 --out "$OUT/bench-${mv%%/*}.json"
done

echo "== 6. side by side with torch.compile"
if [ -z "${WEIGHTS:-}" ]; then
    echo "skipped: WEIGHTS=DIR names no weights for kornia's models (a laptop's artifacts/downloads)"
    exit 0
fi
REFERENCE_PYTHON=${REFERENCE_PYTHON:-python3}
if ! "$REFERENCE_PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "skipped: $REFERENCE_PYTHON has no torch with CUDA"
    exit 0
fi
if [ ! -x .venv-side/bin/python ]; then
    "$REFERENCE_PYTHON" -m venv --system-site-packages .venv-side
    pip_install .venv-side/bin/python "kornia==0.9.0" "onnxruntime-gpu==1.31.1" "pydantic>=2.6" "pyyaml>=6"
    pip_install .venv-side/bin/python --no-deps -e .
fi
GLUEFORGE_DOWNLOAD_CACHE="$WEIGHTS" .venv-side/bin/python benchmarks/cuda_side_by_side.py "${BUNDLES[@]}" \
    --runs 50 ${PAIRS:+--pairs "$PAIRS"} --out "$OUT/side_by_side.json"
