"""Every subcommand of the `glueforge` command answers bad input with one line and exit status 2, no traceback:
zero, negative, missing and wrong-kind values (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glueforge.store import LocalStore
from tests.test_store import MODEL, TARGET, files, make_bundle


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "file.txt").write_text("not a directory")
    bundle = make_bundle(root / "bundle", "1.0.0", files("cli"))
    store = LocalStore(root / "store")
    store.publish(bundle)
    (store.bundle_path(MODEL, "1.0.0", TARGET) / "graph1.onnx").unlink()  # a stored bundle missing a file
    return {"root": root, "file": root / "file.txt", "missing": root / "nowhere", "bundle": bundle, "store": root / "store"}


CASES = {
    # subcommand: [(arguments, words the one line holds)]
    "bench": [(["{bundle}", "--batch", "0"], "0 is below 1"), (["{bundle}", "--batch", "-1"], "-1 is below 1"),
              (["{bundle}", "--batch", "two"], "'two' is not a whole number"), (["{bundle}", "--batch", ","], "names no batch size"),
              (["{bundle}", "--runs", "0"], "0 is below 1"), (["{bundle}", "--seconds", "-1"], "not a positive number of seconds"),
              (["{bundle}", "--seconds", "0"], "not a positive number"), (["{bundle}", "--warmup", "-2"], "-2 is below 0"),
              (["{missing}"], "no such directory"), (["{file}"], "not a directory"),
              (["{bundle}", "--sequence", "{missing}"], "no such directory"), (["{bundle}", "--out", "{root}"], "a directory"),
              ([], "the following arguments are required")],
    "infer": [(["{missing}", "{file}"], "no such directory"), (["{bundle}", "{missing}"], "no such file"),
              (["{bundle}", "{root}"], "not a file"), (["{file}"], "not a directory"),
              (["{bundle}", "{file}", "--out", "{missing}/x/y.png"], "no directory")],
    "evaluate": [(["{bundle}", "--warps", "0"], "0 is below 1"), (["{bundle}", "--warps", "-3"], "-3 is below 1"),
                 (["{bundle}", "--images", "{missing}"], "no such directory"), (["{bundle}", "--images", "{file}"], "not a directory"),
                 (["{bundle}", "--seed", "-1"], "-1 is below 0")],
    "verify": [(["{missing}"], "no such directory"), (["{file}"], "not a directory"), (["{root}"], "no manifest.json")],
    "report": [(["{missing}"], "no such directory"), (["{file}"], "not a directory")],
    "engine": [(["{missing}", "--out", "{root}/o"], "no such directory"), (["{bundle}"], "required: --out")],
    "pull": [([MODEL, "--target", TARGET, "--store", "{store}", "--dest", "{file}"], "exists and is not a directory"),
             ([MODEL, "--target", TARGET, "--store", "{store}", "--dest", "{root}/dest"], "cannot read graph1.onnx"),
             ([MODEL, "--target", TARGET, "--store", "{store}", "--dest", "{root}/dest", "--version", "9"], "no version"),
             ([MODEL, "--target", TARGET, "--store", "{store}", "--dest", "{root}/d", "--trust", "{missing}"], "no such file"),
             ([MODEL, "--store", "{store}", "--dest", "{root}/d"], "required: --target")],
    "keygen": [(["--out", "{file}"], "exists and is not a directory"), ([], "required: --out")],
    "parity": [(["aliked_lightglue", "--data", "{missing}"], "no such directory")],
}


@pytest.mark.parametrize("command, arguments, words", [(c, a, w) for c, cases in CASES.items() for a, w in cases],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_input_gets_one_line_and_status_2(where, command, arguments, words):
    args = [a.format(**where) for a in arguments]
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", command, *args], capture_output=True, text=True,
                          cwd=where["root"], env={**os.environ, "GLUEFORGE_STORE": ""})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert words in lines[0], lines[0]
    assert not (where["root"] / "dest" / MODEL).exists()


def test_every_subcommand_is_driven():
    import argparse

    from glueforge.cli import build_parser

    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == set(CASES), sorted(set(subcommands.choices) ^ set(CASES))


def test_a_version_that_is_no_specifier_is_refused(where):
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "pull", MODEL, "--target", TARGET, "--store", str(where["store"]),
                           "--dest", str(where["root"] / "dest"), "--version", "../0.1.0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is neither a version nor a specifier" in proc.stderr
