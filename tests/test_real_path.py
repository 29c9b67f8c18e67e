"""The real-data path end to end, apart from the data and the weights: a tiny NUS-WIDE
release in the official format, its image URLs served by a local HTTP server, run through
the real grid (params.real.yaml): prepare -> download -> features (a small backbone given
as a ``file:`` checkpoint) -> a QKS cell with the paper's settings -> QKS Table 1 with the
published numbers beside ours, and the report."""

from __future__ import annotations

import json
import random

import open_clip
import pytest
import yaml
from safetensors.torch import save_file

from pipelines.config import load_params
from pipelines.data import reference
from pipelines.plan import plan
from pipelines.report import build_report
from pipelines.runner import run_stage, run_stages
from pipelines.vlp.backbone import register_model_configs
from tests.conftest import REPO
from tests.fault_server import FaultServer
from tests.release_fixtures import NUS_URL_FIELDS, NusImage, build_nus_wide


def _images(srv: FaultServer, n: int = 24) -> list[NusImage]:
    rng = random.Random(0)
    concepts = reference.nus_concepts81()
    tags = [t for t in reference.nus_taglist1k() if t not in set(concepts)]
    common = ["sky", "water", "person", "clouds", "animal", "grass"]  # frequent concepts
    out = []
    for i in range(n):
        split = "train" if i % 2 == 0 else "test"
        url = srv.url(f"/good/nus{i}.jpg?w=72&h=64")
        if i == 3:  # a dead link on a test image: the cell must do without it
            url = srv.url("/status/404/nus3.jpg")
        out.append(
            NusImage(
                f"cat{i % 3}/{i:04d}_{1000 + i}.jpg",
                split,
                set(rng.sample(tags, 3)),
                set(rng.sample(common, 2)),
                dict.fromkeys(NUS_URL_FIELDS, url),
            )
        )
    return out


def real_grid_raw(tmp_path, srv: FaultServer, datasets: tuple[str, ...] = ("nus-wide",)) -> dict:
    """params.real.yaml, read as a dict and pointed at a tiny NUS-WIDE release (its URLs on
    ``srv``) for ``datasets``, with ViT-B/16 replaced by a tiny random ViT checkpoint."""
    release = build_nus_wide(tmp_path / "NUS-WIDE", _images(srv))
    register_model_configs()
    ckpt = tmp_path / "weights" / "tiny-clip.safetensors"
    ckpt.parent.mkdir()
    model = open_clip.create_model("ovml-tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))

    raw = yaml.safe_load((REPO / "params.real.yaml").read_text())
    raw["tracking"] = {"enabled": False}
    raw["device"] = "cpu"
    for ds in datasets:
        raw["datasets"][ds]["release_dir"] = str(release.root)
    raw["datasets"]["nus-wide"]["download"] = {
        "chunks": 2,
        "workers": 2,
        "allow_private_hosts": True,  # the release's URLs point at a server on 127.0.0.1
    }
    raw["backbones"]["vit-b16-openai"] = {"model": "ovml-tiny-vit", "weights": f"file:{ckpt}"}
    return raw


@pytest.mark.slow
def test_real_grid_runs_qks_table1_on_a_tiny_release(tmp_path):
    with FaultServer() as srv:
        raw = real_grid_raw(tmp_path, srv)
        (tmp_path / "ws").mkdir()
        path = tmp_path / "ws" / "params.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        # Table 1's baselines attach through their `variant:` keys as soon as they are declared
        assert load_params(path).table_cells("qks-table1") == [
            ("nus-wide", "clip_zeroshot-vit-b16"),
            ("nus-wide", "dualcoop-nus-wide"),
            ("nus-wide", "mkt-nus-wide"),
            ("nus-wide", "qks-nus-wide"),
        ]
        # this run keeps CLIP's row and QKS's (the baselines learn in their own tests)
        for baseline in ("dualcoop-nus-wide", "mkt-nus-wide"):
            del raw["variants"][baseline]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        params = load_params(path)

        assert params.table_cells("qks-table1") == [
            ("nus-wide", "clip_zeroshot-vit-b16"),
            ("nus-wide", "qks-nus-wide"),
        ]
        ran = run_stages(
            params, ["table@qks-table1"], lambda p, st: run_stage(p, st, progress=False)
        )
    assert ran == [
        "dataset@nus-wide",
        "images@nus-wide",
        "features@nus-wide@vit-b16-openai",
        "cell@nus-wide@clip_zeroshot-vit-b16",
        "cell@nus-wide@qks-nus-wide",
        "table@qks-table1",
    ]
    ws = tmp_path / "ws"
    summary = json.loads((ws / "data/nus-wide-images.summary.json").read_text())
    assert summary["total"] == 24 and summary["counts"]["ok"] == 23  # one dead link
    cell = json.loads((ws / "results/cells/nus-wide/qks-nus-wide/metrics.json").read_text())
    assert cell["meta"]["n_test_images"] == 11  # 12 test images, minus the dead link
    assert cell["meta"]["config"]["n_queries"] == 12 and cell["meta"]["config"]["n_layers"] == 7
    assert cell["meta"]["config"]["train"]["weight_decay"] == 0.01

    # fresh now: the plan says so, and a second run recomputes nothing
    states = {s.name: s.state for s in plan(params)}
    assert states["cell@nus-wide@qks-nus-wide"] == "fresh"
    assert states["cell@nus-wide@epsilon-nus-wide"] == "blocked"  # needs the GloVe file
    assert run_stages(params, ["table@qks-table1"], lambda p, st: run_stage(p, st)) == []

    out = build_report(params, log=False)
    rep = {t["key"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    t1 = rep["qks-table1"]
    assert t1["kind"] == "reproduced" and "with_positive" in t1["protocol"]
    qks = {r["task"]: r for r in t1["rows"] if r["label"] == "QKS"}
    assert qks["zsl"]["status"] == "reproduced"
    zsl = qks["zsl"]["cells"]["mAP"]
    assert zsl["paper"] == 49.5 and zsl["ours"] is not None
    assert zsl["delta"] == pytest.approx(zsl["ours"] - 49.5)
    assert qks["gzsl"]["cells"]["F1@5"]["paper"] == 28.3
    # images the cell used (12 test images, one dead link), then kept by the protocol
    # (every test image here has an unseen positive: none dropped)
    assert qks["zsl"]["images"]["test"] == 11
    assert qks["zsl"]["images"]["test (zsl, kept)"] == 11
    lesa = next(r for r in t1["rows"] if r["label"] == "LESA")
    assert lesa["status"] == "published only"
    clip = next(r for r in t1["rows"] if r["label"] == "CLIP")
    assert clip["status"] == "reproduced" and clip["cells"]["mAP"]["paper"] == 34.7
    # a table whose data is missing says what it needs
    t2 = rep["qks-table2"]
    q2 = next(r for r in t2["rows"] if r["label"] == "QKS")
    assert q2["status"].startswith("not computed: needs release folder")
    assert "nus-wide: downloaded 23 of 24 images (95.8%)" in t1["notes"]
    table_md = (ws / "results/tables/qks-table1/table.md").read_text()
    assert "qks-nus-wide" in table_md and "(49.5)" in table_md  # the table stage's own file
