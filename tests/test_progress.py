"""Progress of long steps: a tqdm bar in a terminal, plain log lines elsewhere (``glueforge.progress``)."""

from __future__ import annotations

import io
import logging

from glueforge.fetch import copy_counted
from glueforge.progress import progress


def test_log_lines_where_there_is_no_terminal(monkeypatch, caplog):
    monkeypatch.setenv("GLUEFORGE_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="glueforge.progress")
    out = io.BytesIO()
    copy_counted(io.BytesIO(b"x" * (20 << 20)), out, 20 << 20, "download weights.pth")
    lines = [r.getMessage() for r in caplog.records if r.name == "glueforge.progress"]
    assert lines[0] == "download weights.pth ..." and lines[-1].startswith("download weights.pth: done, 20.0 MiB in ")
    caplog.clear()
    copy_counted(io.BytesIO(b"x" * 1000), io.BytesIO(), 1000, "download small.json")  # small transfers stay quiet
    assert [r for r in caplog.records if r.name == "glueforge.progress"] == []


def test_a_bar_in_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("GLUEFORGE_PROGRESS", "bar")
    with progress("export model", total=3, unit="graph") as bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "export model" in err and "/3 [" in err  # tqdm's counter and timer


def test_off_is_silent(monkeypatch, capsys, caplog):
    monkeypatch.setenv("GLUEFORGE_PROGRESS", "off")
    with progress("anything", total=2) as bar:
        bar.update(2)
    assert capsys.readouterr().err == "" and not [r for r in caplog.records if r.name == "glueforge.progress"]
