"""Stage kind ``backbone``: ``<models>/<backbone>/``, only for backbones the pipeline
pre-trains (``weights: pretrain``): a tiny CLIP trained contrastively, or two packaged
towers aligned (``pretrain: {recipe: lit}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, LIT_CODE, Need, Stage, read_json_dict, rel

KIND = "backbone"


def request(params: Any, need: Need) -> None:
    return None  # asked for by the stages that read a backbone


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage | None:
    (bb,) = key
    cfg = params.backbones[bb]
    if cfg.weights != "pretrain":
        return None
    assert cfg.pretrain is not None
    recipe = LIT_CODE if cfg.pretrain.recipe == "lit" else ("pipelines/vlp/pretrain.py",)
    return Stage(
        KIND,
        key,
        (need("dataset", cfg.pretrain.dataset),),
        rel(params, "models", bb),
        ("seed", f"backbones.{bb}"),
        (
            *LIBRARY_CODE,
            *recipe,
            "pipelines/vlp/backbone.py",
            f"pipelines/vlp/model_configs/{cfg.model}.json",
        ),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.cells import pretrain_backbone

    return pretrain_backbone(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    info = read_json_dict(folder / "open_clip_config.json").get("ovml", {})
    losses = info.get("epoch_losses", [])
    meta: dict[str, Any] = {
        "epochs": len(losses) or None,
        "final_loss": losses[-1] if losses else None,
        "seconds": info.get("seconds"),
        "mlflow_run_id": info.get("mlflow_run_id"),
        "mlflow_experiment_id": info.get("mlflow_experiment_id"),
    }
    towers = read_json_dict(folder / "towers.json")  # packaged towers (pipelines/vlp/towers.py)
    for side in ("image", "text"):
        if side in towers:
            src = towers[side]
            meta[f"{side} tower"] = f"{src.get('package')}=={src.get('version')}"
            for path, digest in src.get("sha256", {}).items():
                meta[f"{side} sha256 {path}"] = digest
    return meta
