"""The probe of issue 8, end to end on toyworld: delete, truncate or edit each kind of
artefact (features shard, cell model, metrics.json, backbone weights, stage record), then
run. The outcome must be a clear error naming the file and the stage that rebuilds it, or
a correct rebuild; never a wrong number.

Each test works on its own copy of the session's tiny workspace (tests/conftest.py), so
the shared one stays untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import load_params
from pipelines.graph import STAMP, build_graph, stage_status, upstream

FEATURES = "features/toyworld/toy-clip"
CELL = "results/cells/toyworld/clip_zeroshot"
WEIGHTS = "models/toy-clip/open_clip_model.safetensors"
QKS = {
    "method": "qks",
    "n_queries": 2,
    "n_layers": 1,
    "heads": 4,
    "dropout": 0.0,
    "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "val_fraction": 0.0},
}


@pytest.fixture
def workspace(tiny_workspace: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the tiny workspace (mtimes kept, so records still match)."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace.parent, root, symlinks=True)
    monkeypatch.setenv("OVML_TRACKING", "0")  # tracking is no stage input; keep runs fast
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root / "params.yaml"


def ovml(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


def zsl_map(params_path: Path, cell: str = CELL) -> float:
    return json.loads((params_path.parent / cell / "metrics.json").read_text())["zsl"]["mAP"]


def status(params_path: Path, name: str) -> tuple[bool, str]:
    p = load_params(params_path)
    return stage_status(p, build_graph(p), name)


def test_workspace_copy_is_fresh(workspace: Path):
    code, text = ovml("list", "-p", str(workspace))
    assert code == 0
    p = load_params(workspace)
    graph = build_graph(p)
    for name in upstream(graph, ["table@tiny"]):  # what the shared workspace built
        assert stage_status(p, graph, name) == (True, "up to date"), name
    code, text = ovml("verify", "-p", str(workspace))
    assert code == 0, text


# ------------------------------------------------------------------- features shard
def test_truncated_features_shard(workspace: Path):
    before = zsl_map(workspace)
    shard = workspace.parent / FEATURES / "test" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])

    fresh, why = status(workspace, "features@toyworld@toy-clip")
    assert not fresh and "test/shard-00000.safetensors" in why and "size" in why
    code, text = ovml("verify", "-p", str(workspace))
    assert code == 1 and "shard-00000.safetensors" in text

    # the DVC view runs one stage without its upstream: a clear error, not SafetensorError
    code, text = ovml("stage", "cell", "toyworld", "clip_zeroshot", "-p", str(workspace))
    assert code == 1
    assert "shard-00000.safetensors" in text and "features@toyworld@toy-clip" in text

    # reading it directly names the file and the stage too
    from pipelines.vlp.features import load_features

    with pytest.raises(ValueError, match=r"shard-00000\.safetensors.*features@toyworld@toy-clip"):
        load_features(shard.parent)

    # the CLI rebuilds the features, then the cells: the same number as before
    code, text = ovml("run", "toyworld", "clip_zeroshot", "-p", str(workspace))
    assert code == 0, text
    assert "features@toyworld@toy-clip is stale" in text
    assert zsl_map(workspace) == pytest.approx(before, abs=1e-6)
    assert ovml("verify", "-p", str(workspace))[0] == 0


# ---------------------------------------------------------------------- metrics.json
def test_metrics_json_edited_by_hand(workspace: Path):
    before = zsl_map(workspace)
    path = workspace.parent / CELL / "metrics.json"
    m = json.loads(path.read_text())
    m["zsl"]["mAP"] = 99.9
    path.write_text(json.dumps(m, indent=2))

    fresh, why = status(workspace, "cell@toyworld@clip_zeroshot")
    assert not fresh and "metrics.json" in why
    code, text = ovml("list", "-p", str(workspace))
    assert "metrics.json" in text  # the reason shows in `ovml list`
    assert ovml("verify", "-p", str(workspace))[0] == 1

    code, text = ovml("table", "tiny", "-p", str(workspace))
    assert code == 0, text
    assert "99.9" not in text
    assert zsl_map(workspace) == pytest.approx(before, abs=1e-6)
    table_md = (workspace.parent / "results/tables/tiny/table.md").read_text()
    assert "99.9" not in table_md


def test_corrupt_metrics_json_names_file_and_stage(workspace: Path):
    p = load_params(workspace)
    (workspace.parent / CELL / "metrics.json").write_text("{ not json")
    from pipelines.cells import load_cell_metrics

    with pytest.raises(ValueError, match=r"metrics\.json.*cell@toyworld@clip_zeroshot"):
        load_cell_metrics(p, "toyworld", "clip_zeroshot")


# ---------------------------------------------------------------------- stage record
@pytest.mark.parametrize("damage", ["delete", "garbage", "foreign_fingerprint"])
def test_damaged_stage_record_reruns_the_stage(workspace: Path, damage: str):
    before = zsl_map(workspace)
    stamp = workspace.parent / CELL / STAMP
    if damage == "delete":
        stamp.unlink()
    elif damage == "garbage":
        stamp.write_text("\x00\x01 not json")
    else:
        rec = json.loads(stamp.read_text())
        rec["fingerprint"] = "0" * 64
        stamp.write_text(json.dumps(rec))
    fresh, why = status(workspace, "cell@toyworld@clip_zeroshot")
    assert not fresh and why
    code, text = ovml("run", "toyworld", "clip_zeroshot", "-p", str(workspace))
    assert code == 0, text
    assert "▶ cell@toyworld@clip_zeroshot" in text
    assert zsl_map(workspace) == pytest.approx(before, abs=1e-6)
    assert status(workspace, "cell@toyworld@clip_zeroshot") == (True, "up to date")


# ------------------------------------------------------------------- backbone weights
def test_missing_backbone_weights_are_an_error_or_a_rebuild(workspace: Path):
    """Finding 2: with the weights gone, open_clip initialised a random tower and the cell
    was marked fresh with a wrong mAP."""
    root = workspace.parent
    before = zsl_map(workspace)
    (root / WEIGHTS).unlink()

    fresh, why = status(workspace, "backbone@toy-clip")
    assert not fresh and "open_clip_model.safetensors missing" in why

    from pipelines.cells import load_backbone

    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors.*backbone@toy-clip"):
        load_backbone(load_params(workspace), "toy-clip")
    code, text = ovml("stage", "features", "toyworld", "toy-clip", "-p", str(workspace))
    assert code == 1
    assert "open_clip_model.safetensors" in text and "backbone@toy-clip" in text

    code, text = ovml("run", "toyworld", "clip_zeroshot", "-p", str(workspace))
    assert code == 0, text
    assert "▶ backbone@toy-clip" in text and "▶ cell@toyworld@clip_zeroshot" in text
    assert (root / WEIGHTS).exists()
    assert zsl_map(workspace) == pytest.approx(before, abs=0.5)  # same seed, same recipe
    assert ovml("verify", "-p", str(workspace))[0] == 0


def test_replaced_backbone_weights_make_downstream_stale(workspace: Path):
    """Weights swapped for other bytes of the same size: the content hash catches it, and
    every stage built on them is stale in every view (not only in `ovml run`)."""
    root = workspace.parent
    path = root / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # same size, other weights
    path.write_bytes(bytes(data))
    fresh, why = status(workspace, "backbone@toy-clip")
    assert not fresh and "content" in why


# ----------------------------------------------------------------------- cell model
def _add_qks(workspace: Path) -> None:
    raw = yaml.safe_load(workspace.read_text())
    raw["variants"]["qks-tiny"] = QKS
    raw["tables"]["tiny"]["rows"].append("qks-tiny")
    workspace.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_force_retrains_from_scratch(workspace: Path):
    """Finding 3: `ovml run --force` resumed the last checkpoint (epochs_run_now 0)."""
    _add_qks(workspace)
    root = workspace.parent
    cell = "results/cells/toyworld/qks-tiny"
    assert ovml("run", "toyworld", "qks-tiny", "-p", str(workspace))[0] == 0
    first = json.loads((root / cell / "metrics.json").read_text())
    assert first["meta"]["fit"]["epochs_run_now"] == 2
    code, text = ovml("run", "toyworld", "qks-tiny", "--force", "-p", str(workspace))
    assert code == 0, text
    again = json.loads((root / cell / "metrics.json").read_text())
    assert again["meta"]["fit"]["epochs_run_now"] == 2
    assert again["zsl"]["mAP"] == pytest.approx(first["zsl"]["mAP"], abs=1e-4)


def test_resume_fingerprint_covers_the_text_tower(tiny_workspace: Path, tmp_path: Path):
    """Finding 3: the checkpoint fingerprint hashed the image features only, so a model
    trained on a random text tower was resumed after the weights were restored."""
    from pipelines.cells import make_context
    from pipelines.train import TrainConfig, Trainer

    params = load_params(tiny_workspace)
    ctx = make_context(params, "toyworld", "clip_zeroshot", tmp_path, progress=False)
    trainer = Trainer(TrainConfig(), ctx)
    before = trainer._data_digest("features")
    with torch.no_grad():
        ctx.backbone.model.token_embedding.weight.add_(1.0)  # another text tower
    assert trainer._data_digest("features") != before


def test_deleted_cell_model_and_force_retrains_from_scratch(workspace: Path):
    """Finding 4 (a deleted cell model counted as fresh) and finding 3 (`--force`)."""
    _add_qks(workspace)
    root = workspace.parent
    code, text = ovml("run", "toyworld", "qks-tiny", "-p", str(workspace))
    assert code == 0, text
    cell = "results/cells/toyworld/qks-tiny"
    first = json.loads((root / cell / "metrics.json").read_text())
    assert first["meta"]["fit"]["epochs_run_now"] == 2
    assert (root / cell / "model.safetensors").exists()

    (root / cell / "model.safetensors").unlink()
    fresh, why = status(workspace, "cell@toyworld@qks-tiny")
    assert not fresh and "model.safetensors missing" in why

    code, text = ovml("run", "toyworld", "qks-tiny", "--force", "-p", str(workspace))
    assert code == 0, text
    again = json.loads((root / cell / "metrics.json").read_text())
    assert again["meta"]["fit"]["epochs_run_now"] == 2  # from scratch, not resumed
    assert again["meta"]["fit"]["resumed_from_epoch"] == 0
    assert again["zsl"]["mAP"] == pytest.approx(first["zsl"]["mAP"], abs=1e-4)
    assert (root / cell / "model.safetensors").exists()
    # --force reran only the cell, not its (fresh) upstream
    assert "▶ features@" not in text and "▶ backbone@" not in text


def test_table_force_reruns_only_the_table(workspace: Path):
    code, text = ovml("table", "tiny", "--force", "-p", str(workspace))
    assert code == 0, text
    assert "▶ table@tiny" in text
    assert "▶ cell@" not in text and "▶ backbone@" not in text
    code, text = ovml("table", "tiny", "--force-upstream", "-p", str(workspace))
    assert code == 0, text
    for name in ("dataset@toyworld", "backbone@toy-clip", "cell@toyworld@random", "table@tiny"):
        assert f"▶ {name}" in text


# ------------------------------------------------------------------ prepared dataset
def test_truncated_dataset_file_names_the_stage(workspace: Path):
    path = workspace.parent / "data/toyworld/test.npz"
    path.write_bytes(path.read_bytes()[:200])
    fresh, why = status(workspace, "dataset@toyworld")
    assert not fresh and "test.npz" in why
    from pipelines.data.prepared import PreparedDataset

    with pytest.raises(ValueError, match=r"test\.npz: unreadable.*dataset@toyworld"):
        PreparedDataset.load(path.parent)
    code, text = ovml("stage", "cell", "toyworld", "random", "-p", str(workspace))
    assert code == 1 and "test.npz" in text and "dataset@toyworld" in text
