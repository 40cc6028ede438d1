"""``report.html`` in every bundle and ``glueforge report STORE``, opened in headless Chromium.

Chromium (Debian's ``chromium``; ``.ci/run`` installs it) loads each page from disk; every image
must have loaded (complete, with a size), and the console must show no error. Screenshots are
written to ``$GLUEFORGE_REPORT_SCREENSHOTS`` (default: the project's artifacts) for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium, open_page
from tests.project import MATCHED, MODELS, VERSIONS


@pytest.fixture(scope="module")
def browser() -> None:
    if chromium() is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run installs it)")


def _shots(project: Path) -> Path:
    path = Path(os.environ.get("GLUEFORGE_REPORT_SCREENSHOTS", project / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_every_bundle_report_opens_with_every_image(built_for, browser, target):
    for model in MODELS:
        bundle = built_for / "artifacts/store" / model / VERSIONS[model] / target
        page = open_page(bundle / "report.html")
        assert page.errors == [], (model, page.errors)
        # the latency plot and the picture of the validation pair
        assert len(page.images) == 2 and all(i["complete"] and i["naturalWidth"] > 100 for i in page.images), (model, page.images)
        assert page.title == f"{model} {VERSIONS[model]} for {target}"
        for section in ("Provenance", "Validation", "Latency", "Validation pair", "Reproduce", "image WxH"):
            assert section in page.text, (model, section)
        assert ("matches on the validation pair" in page.text.lower()) == (model in MATCHED)
        assert "FAIL" not in page.text
        if model == "aliked_lightglue":
            (_shots(built_for) / f"report-{target}-{model}.png").write_bytes(page.screenshot)


def test_fp16_report_shows_fp16_against_fp32(rtx_built, browser):
    bundle = rtx_built / "artifacts/store/aliked_lightglue" / VERSIONS["aliked_lightglue"] / "rtx"
    page = open_page(bundle / "report.html")
    assert page.errors == [] and "FP16 against FP32" in page.text
    assert "Not measured: not measured where it was built" in page.text and "glueforge bench" in page.text
    assert len(page.images) == 1 and page.images[0]["naturalWidth"] > 100  # the validation pair; no latency plot
    (_shots(rtx_built) / "report-rtx-aliked_lightglue.png").write_bytes(page.screenshot)


def test_store_index_compares_every_bundle(openvino_built, browser):
    store = openvino_built / "artifacts/store"
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "report", str(store)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = Path(proc.stdout.strip())
    assert index == store / "index.html"
    page = open_page(index)
    assert page.errors == [] and len(page.images) == 1 and page.images[0]["naturalWidth"] > 100
    for model in MODELS:
        for target in ("cpu", "openvino"):
            assert f"{model}\t{target}" in page.text, (model, target)
    for column in ("homography AUC@3px", "p50 ms per pair", "p50 ms per image"):
        assert column in page.text, column
    # pair and image latencies in their own columns, each with its graph and image size
    assert "(end2end, 640x480)" in page.text and "(extractor, 640x480)" in page.text
    html = index.read_text()
    assert html.count('href="') == html.count("report</a>") >= 2 * len(MODELS)
    (_shots(openvino_built) / "index.png").write_bytes(page.screenshot)
