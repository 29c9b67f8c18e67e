"""`ovml report`: every table reproduced beside published, as HTML + Markdown, checked in
headless Chromium (screenshot included); `ovml plan` lists stages and what they need."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.config import load_params
from pipelines.report import build_report, pr_curve
from tests.conftest import REPO


def _workspace_with_paper_tables(tiny_workspace: Path, tmp_path: Path) -> Path:
    """A copy of the computed tiny workspace whose params add tables tied to paper tables
    (over cells that already exist, so nothing is recomputed)."""
    ws = tmp_path / "ws"
    shutil.copytree(tiny_workspace.parent, ws, symlinks=True)
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["tracking"] = {"enabled": False}
    raw["tables"]["tiny-qks"] = {
        "title": "tiny: QKS Table 1 analogue",
        "paper": "qks/table1",
        "datasets": ["toyworld"],
        "rows": ["random", "clip_zeroshot"],
        "match": {"clip_zeroshot": "CLIP"},
    }
    raw["tables"]["tiny-sweep"] = {
        "title": "tiny: a sweep",
        "paper": "qks/figure3a",
        "datasets": ["toyworld"],
        "rows": ["random", "clip_zeroshot-single", "clip_zeroshot"],
        "x": {"random": 0, "clip_zeroshot-single": 1, "clip_zeroshot": 12},
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ws / "params.yaml"


def test_report_lays_ours_beside_published(tiny_workspace, tmp_path):
    params = load_params(_workspace_with_paper_tables(tiny_workspace, tmp_path))
    out = build_report(params, log=False)
    rep = json.loads((out / "report.json").read_text())
    tables = {t["key"]: t for t in rep["tables"]}
    # the params file's tables, then every transcribed table it does not reproduce
    assert {"tiny", "tiny-qks", "tiny-sweep", "qks/table2", "rcnn/table3"} <= set(tables)
    assert len(tables) == 3 + 37 - 0  # no real table is declared here
    qks = tables["tiny-qks"]
    assert qks["kind"] == "analogue"
    clip = [r for r in qks["rows"] if r["label"] == "CLIP"]
    assert [r["task"] for r in clip] == ["zsl", "gzsl"]
    zsl = clip[0]["cells"]["mAP"]
    ours = json.loads((out.parent / "cells/toyworld/clip_zeroshot/metrics.json").read_text())
    assert zsl["paper"] == 34.7 and zsl["ours"] == pytest.approx(ours["zsl"]["mAP"])
    assert zsl["delta"] is None  # toyworld is not NUS-WIDE: no delta on analogues
    lesa = next(r for r in qks["rows"] if r["label"] == "LESA")
    assert lesa["status"].startswith("published only") and lesa["cells"]["mAP"]["paper"] == 19.4
    assert any(r["variant"] == "random" and r["status"] == "analogue" for r in qks["rows"])
    # a real table nobody declared: published numbers, and what would reproduce them
    t2 = tables["qks/table2"]
    row = next(r for r in t2["rows"] if r["label"] == "QKS" and r["task"] == "zsl")
    assert row["cells"]["mAP"]["paper"] == 72.6 and row["cells"]["mAP"]["ours"] is None
    assert "qks-open-images" in row["status"]
    e3 = tables["epsilon/table3"]
    assert "figure only" in " ".join(e3["notes"])
    # plots: mAP beside paper, the sweep as lines, unseen per-class AP, PR curves
    plots = set(qks["plots"]) | set(tables["tiny-sweep"]["plots"])
    assert {"plots/tiny-qks-map.png", "plots/tiny-sweep-sweep.png"} <= plots
    assert any(p.endswith("-unseen-ap.png") for p in plots)
    assert any(p.endswith("-pr.png") for p in plots)
    for p in plots:
        assert (out / p).stat().st_size > 2000
    md = (out / "report.md").read_text()
    assert "| CLIP | clip_zeroshot | analogue |" in md and "34.7" in md


def test_seed_folders_give_mean_and_std(tiny_workspace, tmp_path):
    """Cells of other seeds (``<variant>@s<seed>``, issue 9's layout) average, with std."""
    path = _workspace_with_paper_tables(tiny_workspace, tmp_path)
    params = load_params(path)
    cells = path.parent / "results/cells/toyworld"
    base = json.loads((cells / "clip_zeroshot/metrics.json").read_text())
    for seed, shift in ((1, 2.0), (2, -2.0)):
        d = cells / f"clip_zeroshot@s{seed}"
        d.mkdir()
        m = json.loads(json.dumps(base))
        m["zsl"]["mAP"] += shift
        (d / "metrics.json").write_text(json.dumps(m))
    out = build_report(params, log=False)
    rep = {t["key"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    row = next(r for r in rep["tiny-qks"]["rows"] if r["label"] == "CLIP" and r["task"] == "zsl")
    assert row["status"] == "analogue, 3 seeds"
    assert row["cells"]["mAP"]["ours"] == pytest.approx(base["zsl"]["mAP"])
    assert row["cells"]["mAP"]["std"] == pytest.approx(2.0)
    assert "± 2.0" in (out / "report.md").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_html_in_headless_chromium(tiny_workspace, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium)")
    params = load_params(_workspace_with_paper_tables(tiny_workspace, tmp_path))
    out = build_report(params, log=False)
    index = (out / "index.html").resolve()
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*common, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<section") == 40 and "tiny-qks" in html and "34.7" in html
    assert '<img src="plots/tiny-qks-map.png"' in html or "plots/tiny-qks-map.png" in html
    res = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (2400, 1280)
    assert img.std() > 10  # text, tables and plots drawn, not a blank page
    # the first plot decoded: the page's images load (relative paths next to index.html)
    assert (img < 128).mean() > 0.01


def test_pr_curve_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3]], dtype=np.float32)
    labels = np.array([[1, -1], [-1, 1], [0, 1]], dtype=np.int8)
    precision, recall = pr_curve(scores, labels)
    # order of annotated pairs: .9(+) .8(-) .7(+) .3(+) .1(-) (the 0 label is ignored)
    assert np.allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    assert np.allclose(recall, [1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_plan_lists_every_real_table_and_what_it_needs():
    from typer.testing import CliRunner

    from pipelines.cli import app

    res = CliRunner().invoke(
        app, ["plan", "-p", str(REPO / "params.real.yaml")], env={"COLUMNS": "250"}
    )
    assert res.exit_code == 0, res.output
    params = load_params(REPO / "params.real.yaml")
    from pipelines.published import all_tables

    assert {t.paper for t in params.tables.values()} == set(all_tables())
    for name in params.tables:
        assert name in res.output
    assert "NEEDS release folder" in res.output and "glove.6B.300d.txt" in res.output
    assert "vgg19-imagenet.safetensors" in res.output
    assert "c2srt-relations-random" in res.output  # a pending variant of a paper row


def test_report_and_plan_on_seeded_cells(tiny_workspace, tmp_path):
    """Issue 22 item 5: a table with `seeds` names cells `<variant>@s<seed>`; the report
    and the plan read their variant's options (they raised KeyError on `random@s0`)."""
    from pipelines.plan import cell_needs, plan

    path = _workspace_with_paper_tables(tiny_workspace, tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["variants"]["random-glove"] = {"method": "random", "word_vectors": "missing-glove.txt"}
    raw["tables"]["tiny-seeds"] = {
        "title": "tiny: seeded",
        "paper": "qks/table1",
        "datasets": ["toyworld"],
        "rows": ["random", "random-glove"],
        "seeds": [0, 1],
        "match": {"random": "CLIP"},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(path, check_methods=False)
    assert any("missing-glove.txt" in n for n in cell_needs(params, "toyworld", "random-glove@s1"))
    states = {st.name: st for st in plan(params)}
    assert any("missing-glove.txt" in n for n in states["cell@toyworld@random-glove@s0"].needs)
    out = build_report(params, log=False)  # seeded cells not computed: says what they need
    rep = {t["key"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    statuses = {r["status"] for r in rep["tiny-seeds"]["rows"]}
    assert any("missing-glove.txt" in s for s in statuses), statuses
