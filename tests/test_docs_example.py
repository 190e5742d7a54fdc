"""The example under docs/ is what the tool prints for the real runs committed beside it.

The records are three 3-epoch runs of ``greencallbacks demo --country FR`` on a 2-core CPU VM.
To regenerate after a change to the report's layout:

    greencallbacks report docs/example-records.jsonl > docs/example-report.md
    greencallbacks report docs/example-records.jsonl --format latex > docs/example-report.tex
    greencallbacks report docs/example-records.jsonl --format csv --plot docs/example-energy.png > /dev/null
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from greencallbacks import report
from greencallbacks.records import read_records

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def records():
    return read_records(DOCS / "example-records.jsonl")


def test_the_example_is_three_real_runs_of_one_configuration(records):
    assert len(report.run_ids(records)) == 3
    (config, _), = report.group_runs(records)
    assert config["epochs"] == 3 and config["framework"].startswith("lightning")


def test_the_committed_reports_are_what_the_tool_prints_now(records):
    assert (DOCS / "example-report.md").read_text(encoding="utf-8") == report.render(records, "md")
    assert (DOCS / "example-report.tex").read_text(encoding="utf-8") == report.render(records, "latex")


def test_the_figure_is_a_png_and_the_readme_shows_it():
    data = (DOCS / "example-energy.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", data[16:24])) > 100
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "](docs/example-energy.png)" in readme and "(docs/example-report.tex)" in readme


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (pdflatex) installed")
def test_the_example_latex_compiles(tmp_path):
    body = (DOCS / "example-report.tex").read_text(encoding="utf-8")
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "example.tex").write_text(document, encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "example.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    log = (tmp_path / "example.log").read_text(encoding="utf-8", errors="replace")
    assert "Overfull \\hbox" not in log  # the table fits an article's text width


def test_the_readme_loop_of_ones_own_runs_as_written(tmp_path, monkeypatch):
    """The README's snippet for a training loop without a framework, run as it is printed there."""
    import json
    import re

    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    snippet, = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "tracker.phase" in block]
    monkeypatch.chdir(tmp_path)
    # Batches as a DataLoader gives them, (x, y): the snippet's len(batch) counted 2 per batch.
    scope = {"epochs": 2, "loader": [([0.0] * 4, [1.0] * 4)] * 3}
    exec(compile(snippet, "README.md", "exec"), scope)
    records = read_records(tmp_path / "energy" / "energy-records.jsonl")
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase == "train"] == [("train", 0, 12), ("train", 1, 12)]
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
