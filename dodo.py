"""glueforge task graph (doit). Declarations only: the stages live in glueforge/.

    doit build target=cpu                        the default models (models.yaml: default: true) for the cpu target
    doit build target=cpu model=all              every model
    doit build target=cpu model=aliked_lightglue one model
    doit fuse target=orin_nano                   stop after the ONNX stages on purpose
    doit publish target=cpu [version=V] [store=s3://bucket/prefix endpoint=URL] [channel=latest,stable]
                                                 publish to the remote store (unvalidated=1: loudly unvalidated;
                                                 signing_key=PATH: signed manifests, glueforge.signing)
    doit handoff target=orin_nano dest=DIR       everything before the engine, for a device without torch or S3;
                                                 there: GLUEFORGE_REMOTE_CACHE=DIR doit build target=orin_nano
    doit list                                    the stages
    doit build target=cpu config=team.yaml       with an overlay over models.yaml (also GLUEFORGE_CONFIG=team.yaml;
                                                 several: config=a.yaml,b.yaml): it adds or overrides weights,
                                                 models and targets (glueforge/config.py says how they merge)
"""

from doit import get_var

from glueforge.summary import reporter
from glueforge.tasks import load_plan

PLAN = load_plan(
    target=get_var("target", "cpu"),
    models=get_var("model", None),
    config=get_var("config", None),
    version=get_var("version", None),
    store=get_var("store", None),
    endpoint=get_var("endpoint", None),
    channels=get_var("channel", "latest"),
    unvalidated=get_var("unvalidated", "0") == "1",
    signing_key=get_var("signing_key", None),
    dest=get_var("dest", None),
)

# continue: a model whose weights cannot be fetched (or whose validation fails) does not stop the others;
# each failure is reported, the run ends with a line per model (glueforge/summary.py) and exits non-zero
DOIT_CONFIG = {"default_tasks": ["build"], "dep_file": "artifacts/.doit.db", "backend": "json", "verbosity": 2,
               "continue": True, "reporter": reporter(PLAN)}


def task_fetch():
    """fetch weights from their declared sources and verify their sha256"""
    yield from PLAN.fetch_tasks()


def task_export():
    """export the patched PyTorch model to ONNX, a cached step per graph (end2end, extractor, matcher), and io.json"""
    yield from PLAN.stage_tasks("export")


def task_reference():
    """record the validation inputs, the golden outputs and the upstream and homography references"""
    yield from PLAN.stage_tasks("reference")


def task_simplify():
    """simplify each ONNX graph (onnxsim) and infer every tensor's shape"""
    yield from PLAN.stage_tasks("simplify")


def task_fuse():
    """target-specific graph: fused attention (onnxruntime), or lint and FP16 islands (TensorRT)"""
    yield from PLAN.stage_tasks("fuse")


def task_engine():
    """build the engine of the target runtime"""
    yield from PLAN.stage_tasks("engine")


def task_validate():
    """validate the engine against the reference step's golden PyTorch outputs and kornia's outputs"""
    yield from PLAN.stage_tasks("validate")


def task_benchmark():
    """time the engine where its runtime runs here; else record the command the device runs"""
    yield from PLAN.stage_tasks("benchmark")


def task_bundle():
    """bundle engine, I/O spec, validation, sample, benchmarks and report.html into the store, manifest last"""
    yield from PLAN.stage_tasks("bundle")


def task_handoff():
    """everything before the engine, for a device without torch: dest=DIR (glueforge/handoff.py)"""
    yield from PLAN.handoff_tasks()


def task_publish():
    """publish bundles to the remote store: files first, manifest last, channels after"""
    yield from PLAN.publish_tasks()


def task_build():
    return PLAN.build_task()
