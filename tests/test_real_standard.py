"""The standard multi-label task (every label seen in training and scored in test; Epsilon
Table 4): how it is evaluated, and the real grid's path for it end to end: a tiny NUS-WIDE
release read with ``label_set: concepts81`` (dataset ``nus-wide-81``), its images from the
``nus-wide`` entry's download stage, an Epsilon cell with the paper's settings, and Epsilon
Table 4 with the published numbers beside ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipelines.config import EvalConfig, TableConfig, load_params
from pipelines.data import reference
from pipelines.data.prepared import PreparedDataset
from pipelines.evaluate import evaluate_scores, task_columns
from pipelines.io import load_npz
from pipelines.metrics import mean_average_precision, precision_recall_f1_at_k
from pipelines.report import build_report
from pipelines.runner import run_stage, run_stages
from tests.fault_server import FaultServer
from tests.test_real_path import real_grid_raw


def _random(n=50, c=9, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, c), p=[0.75, 0.25])
    return rng.random((n, c)).astype(np.float32), labels


def test_standard_task_is_every_column_of_a_dataset_without_unseen_labels():
    scores, labels = _random()
    m = evaluate_scores(scores, labels, 9, EvalConfig(top_k=[3]))  # all 9 labels seen
    assert "zsl" not in m  # no unseen block
    assert m["standard"]["mAP"] == pytest.approx(mean_average_precision(scores, labels), abs=1e-4)
    p, r, f = precision_recall_f1_at_k(scores, labels, 3)
    assert (m["standard"]["P@3"], m["standard"]["R@3"], m["standard"]["F1@3"]) == pytest.approx(
        (p, r, f), abs=1e-4
    )
    assert m["standard"] == m["gzsl"] and m["meta"]["counts"]["standard"]["classes"] == 9
    # a zero-shot split has no standard task: its unseen labels were never trained on
    m = evaluate_scores(scores, labels, 6, EvalConfig(top_k=[3]))
    assert "standard" not in m and m["zsl"]["mAP"] == pytest.approx(
        mean_average_precision(scores[:, 6:], labels[:, 6:]), abs=1e-4
    )
    cols = task_columns(6, 9)
    assert (cols["standard"].start, cols["standard"].stop) == (0, 0)
    assert TableConfig(title="t", datasets=["d"], rows=[], tasks=["standard"]).tasks == ["standard"]


@pytest.mark.slow
def test_real_grid_runs_epsilon_table4_on_a_tiny_release(tmp_path):
    with FaultServer() as srv:
        raw = real_grid_raw(tmp_path, srv, ("nus-wide", "nus-wide-81"))
        ws = tmp_path / "ws"
        glove = ws / raw["variants"]["epsilon-nus-wide-standard"]["word_vectors"]
        glove.parent.mkdir(parents=True)
        rng = np.random.default_rng(0)
        glove.write_text(
            "".join(
                f"{w} {' '.join(f'{x:.4f}' for x in rng.standard_normal(8))}\n"
                for w in reference.nus_concepts81()
            )
        )
        # the method opens the file relative to the working directory (the repo root, where
        # DVC runs stages); this workspace is elsewhere: give the path absolutely
        raw["variants"]["epsilon-nus-wide-standard"]["word_vectors"] = str(glove)
        path = ws / "params.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        params = load_params(path)
        assert params.table_cells("epsilon-table4") == [
            ("nus-wide-81", "epsilon-nus-wide-standard")
        ]
        ran = run_stages(
            params, ["table@epsilon-table4"], lambda p, st: run_stage(p, st, progress=False)
        )
    # the 81-concept entry reads the images the nus-wide entry downloaded
    assert ran == [
        "dataset@nus-wide",
        "images@nus-wide",
        "dataset@nus-wide-81",
        "features@nus-wide-81@vit-b16-openai",
        "cell@nus-wide-81@epsilon-nus-wide-standard",
        "table@epsilon-table4",
    ]
    ds = PreparedDataset.load(ws / "data/nus-wide-81")
    assert (ds.label_space.n_seen, ds.label_space.n_unseen) == (81, 0)
    assert (ds.splits["train"].labels == 1).any()  # the 81 are labelled on train images
    cell = ws / "results/cells/nus-wide-81/epsilon-nus-wide-standard"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert "zsl" not in metrics and metrics["standard"] == metrics["gzsl"]
    assert metrics["meta"]["counts"]["standard"]["classes"] == 81

    out = build_report(params, log=False)
    rep = {t["key"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    t4 = rep["epsilon-table4"]
    assert t4["kind"] == "reproduced"
    ours = next(r for r in t4["rows"] if r["label"] == "Ours")
    assert ours["status"] == "reproduced" and ours["task"] == "standard"
    # the report re-evaluates the stored scores under the table's protocol (every image kept)
    arrays = load_npz(cell / "scores.npz")
    test = ds.splits["test"]
    rows = [test.image_ids.tolist().index(i) for i in arrays["image_ids"].tolist()]
    want = mean_average_precision(arrays["scores"], test.labels[rows])
    cells = ours["cells"]
    assert cells["mAP"]["ours"] == pytest.approx(want, abs=1e-3)
    assert cells["mAP"]["paper"] == 61.1
    assert cells["mAP"]["delta"] == pytest.approx(cells["mAP"]["ours"] - 61.1)
    assert cells["F1@5"]["paper"] == 55.9 and cells["F1@5"]["ours"] is not None
    lesa = next(r for r in t4["rows"] if r["label"] == "LESA")
    assert lesa["status"] == "published only" and lesa["cells"]["mAP"]["paper"] == 31.5
