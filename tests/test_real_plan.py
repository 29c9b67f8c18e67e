"""params.real.yaml covers the five papers: every transcribed table and figure has its
cells in the real plan (or the test says why not), every variant a paper row names is
declared, and the report prints every table with the published numbers beside what each
cell still needs."""

from __future__ import annotations

import json

import yaml

from pipelines.config import load_params
from pipelines.graph import build_graph
from pipelines.plan import plan, table_plans
from pipelines.published import all_tables
from pipelines.report import build_report
from tests.conftest import REPO

# (paper table, row) -> why that row has no cell in the real plan
WHY_NOT = {
    ("rcnn/table2", "CoMC"): "CoMC's NUS-WIDE cell is on nus-wide-81 (comc/table2's row)",
}


def _real():
    return load_params(REPO / "params.real.yaml")


def test_every_paper_table_has_its_cells_in_the_real_plan():
    params = _real()
    by_ref: dict[str, list[str]] = {}
    for name, tab in params.tables.items():
        assert tab.paper is not None, f"{name}: a real table reproduces a paper table"
        by_ref.setdefault(tab.paper, []).append(name)
    graph = build_graph(params)
    for ref, pub in all_tables().items():
        names = by_ref.get(ref)
        assert names, f"{ref}: no table of params.real.yaml reproduces it"
        cells = {c for n in names for c in params.table_cells(n)}
        for name in names:
            assert set(params.tables[name].datasets) <= set(pub.datasets), name
        assert cells, f"{ref}: the real plan has no cell for it"
        for ds, variant in cells:  # each cell is a stage of the graph
            assert f"cell@{ds}@{variant}" in graph
        for row in pub.rows:
            named = [(ds, v) for ds in pub.datasets for v in row.variants_on(ds, pub.tasks())]
            if (ref, row.row) in WHY_NOT:
                assert not named, f"{ref} {row.row!r}: listed in WHY_NOT but names a variant"
                continue
            if not named:  # a baseline nobody implements: printed as "published only"
                assert row.values is not None or pub.figure_only, (ref, row.row)
                continue
            for ds, v in named:
                assert v in params.variants, f"{ref} {row.row!r}: variant {v!r} not declared"
                assert (ds, v) in cells, f"{ref} {row.row!r}: {ds}/{v} is not a cell"
    assert all(not t.pending for t in table_plans(params))


def test_real_variants_carry_each_papers_settings():
    params = _real()
    cfg = params.method_config
    # CoMC: alpha per dataset (0.7 COCO, 0.4 VOC, 0.5 NUS-WIDE), CLIP RN50, 30 epochs
    for variant, alpha in (("comc-coco", 0.7), ("comc-voc", 0.4), ("comc-nus-wide", 0.5)):
        assert cfg(variant).alpha == alpha and cfg(variant).epochs == 30
        assert params.variants[variant].backbone == "rn50-openai"
    assert params.backbone_for("nus-wide-81", "comc-nus-wide-rn101") == "rn101-openai"
    assert cfg("comc-coco-llama2").corpus == "comc-sentences-llama2"
    assert params.corpora["comc-sentences"].n_sentences == 40000
    assert [cfg(f"comc-voc-{k}shot").few_shot for k in (1, 2, 4, 8, 16)] == [1, 2, 4, 8, 16]
    # C2SRT: NUS-WIDE 20 epochs / 16 related, Open Images 8 epochs / 4 related
    assert (cfg("c2srt").train.epochs, cfg("c2srt").n_related) == (20, 16)
    oi = cfg("c2srt-open-images")
    assert (oi.train.epochs, oi.n_related, oi.train.lr, oi.train.weight_decay) == (
        8,
        4,
        1e-3,
        5e-3,
    )
    assert params.corpora["category-relations"].provider.model == "gpt-4o"
    # RCNn: the reference's NUS-WIDE (defaults) and MS-COCO settings
    assert (cfg("rcnn-nus-wide").n_name_tokens, cfg("rcnn-nus-wide").lambda_pbl) == (3, 1e-4)
    coco = cfg("rcnn-coco")
    assert (coco.n_name_tokens, coco.lambda_pbl, coco.snippet_grids) == (4, 0.2, [2, 3])
    assert (cfg("rcnn-coco-baseline").cnr, cfg("rcnn-coco-baseline").mssa) == (False, False)
    # the standard task and CoMC's all-labels task read their own dataset entries
    assert params.datasets["nus-wide-81"].options == {"label_set": "concepts81"}
    assert params.datasets["coco"].source == "coco"
    assert params.tables["epsilon-table4"].tasks == ["standard"]


def test_report_on_the_real_grid_says_what_each_cell_needs(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "params.real.yaml").read_text())
    raw["tracking"] = {"enabled": False}
    path = tmp_path / "params.yaml"  # releases/, weights/ and data/ do not exist here
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    params = load_params(path)
    out = build_report(params, log=False)
    rep = {t["key"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    assert set(rep) == set(params.tables)  # every paper table is declared: no extra section
    for key, t in rep.items():
        assert t["kind"] == "reproduced", key
        for r in t["rows"]:
            if r["variant"] is None:
                assert r["status"].startswith("published only"), (key, r["label"])
            else:
                assert r["status"].startswith("not computed: needs "), (key, r["status"])
    row = next(
        r for r in rep["comc-table1"]["rows"] if r["label"] == "CoMC" and r["dataset"] == "coco"
    )
    assert row["variant"] == "comc-coco" and row["cells"]["mAP"]["paper"] == 68.7
    assert "release folder" in row["status"] and "$OPENAI_API_KEY" in row["status"]
    shots = {
        (r["dataset"], r["task"]): r["variant"]
        for r in rep["comc-table3"]["rows"]
        if r["label"] == "CoMC"
    }
    assert (
        shots[("coco", "4-shot")] == "comc-coco-4shot"
        and shots[("voc2007", "0-shot")] == "comc-voc"
    )
    eps = next(r for r in rep["epsilon-table4"]["rows"] if r["label"] == "Ours")
    assert eps["dataset"] == "nus-wide-81" and eps["cells"]["mAP"]["paper"] == 61.1
    assert "glove.6B.300d.txt" in eps["status"]
    c2 = {r["dataset"]: r["variant"] for r in rep["c2srt-table1"]["rows"] if r["label"] == "C2SRT"}
    assert c2 == {"nus-wide": "c2srt", "open-images-v4": "c2srt-open-images"}
    rc = {
        r["dataset"]: r["variant"] for r in rep["rcnn-table3"]["rows"] if r["label"] == "Baseline"
    }
    assert rc == {"coco-zsl": "rcnn-coco-baseline", "nus-wide": "rcnn-nus-wide-baseline"}
    md = (out / "report.md").read_text()
    assert "| CoMC | comc-coco | not computed: needs " in md and "68.7" in md
    # the dry run agrees: every CoMC cell waits for its release and the LLM's key
    states = {s.name: s for s in plan(params)}
    assert states["corpus@coco@comc-sentences"].state == "blocked"
    assert any("OPENAI_API_KEY" in n for n in states["corpus@coco@comc-sentences"].needs)
    # nus-wide-81 reads the nus-wide entry's downloads: it waits on that release too
    assert "dataset@nus-wide" in states["features@nus-wide-81@vit-b16-openai"].waits_on
