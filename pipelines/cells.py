"""The science behind the stages that meet torch: build a dataset, download its images,
pre-train a backbone, extract features, run a cell (train, predict, evaluate, track).

The stage modules (pipelines/stages/dataset.py, images.py, backbone.py, features.py,
cell.py) call these functions from their ``run``; the CLI, the DVC stages and the
Dagster assets all go through :func:`pipelines.runner.run_stage`, so the three views
compute the same files. Where outputs live and how to read them back is
pipelines/workspace.py (re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from pipelines.cell_plots import log_cell_figures
from pipelines.config import Params, method_class, split_seed
from pipelines.data.images import from_config, open_images
from pipelines.data.prepared import PreparedDataset
from pipelines.evaluate import evaluate_scores
from pipelines.io import (
    atomic_path,
    is_main_process,
    save_npz,
    write_json,
)
from pipelines.methods.base import CellContext, Method
from pipelines.tracking import DatasetInput, Tracker, dataset_input, mlflow_run
from pipelines.vlp.backbone import resolve_device
from pipelines.vlp.features import extract_features, load_features
from pipelines.workspace import (  # noqa: F401 (re-exported: where a stage's outputs live)
    backbone_weights,
    cell_dir,
    download_summary_path,
    images_root,
    load_backbone,
    load_cell_metrics,
    load_cell_scores,
)

log = logging.getLogger(__name__)


def setup_torch(params: Params) -> None:
    if params.num_threads > 0:
        torch.set_num_threads(params.num_threads)


# ----------------------------------------------------------------------------- dataset
def build_dataset(params: Params, dataset: str, *, progress: bool = True) -> Path:
    cfg = params.datasets[dataset]
    out = params.path("data") / dataset
    if cfg.source == "toyworld":
        from pipelines.data import toyworld

        toyworld.generate(toyworld.ToyworldOptions(**cfg.options), out, progress=progress)
        return out
    if cfg.source == "iconworld":
        from pipelines.data import iconworld

        try:
            iconworld.generate(
                iconworld.IconworldOptions(**cfg.options), out, progress=progress, name=dataset
            )
        except ValueError as err:
            raise ValueError(f"datasets.{dataset}.{err}") from None
        return out
    if cfg.release_dir is None:
        raise ValueError(
            f"datasets.{dataset}.release_dir is not set: point it at the official {cfg.source} "
            "release (see README, 'Real datasets')"
        )
    from pipelines.data import prepare_dataset

    # the stage owns its folder: replace the prepare's own files, leave any other file
    prepare_dataset(cfg.source, Path(cfg.release_dir), out, overwrite=True, **cfg.options)
    return out


# ------------------------------------------------------------------------------ images
def chunk_of(image_ids: list[str], chunks: int) -> np.ndarray:
    """Stable chunk number of each image id (crc32, the same on every machine)."""
    import zlib

    return np.array([zlib.crc32(i.encode()) % chunks for i in image_ids], dtype=np.int64)


def download_dataset_images(
    params: Params, dataset: str, chunk: int | None = None, *, progress: bool = True
) -> Path:
    """Download the prepared manifest's images, one downloader folder per chunk, and
    write ``summary.json`` over all chunks once every chunk has a ledger."""
    import polars as pl

    from pipelines.data.download import DownloadConfig, download_images, summarize_ledger

    cfg = params.datasets[dataset].download
    assert cfg is not None
    manifest_path = params.path("data") / dataset / "manifest.parquet"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path}: the prepared dataset has no manifest of image URLs"
        )
    manifest = pl.read_parquet(manifest_path)
    out = images_root(params, dataset)
    assert out is not None
    which = chunk_of(manifest["image_id"].to_list(), cfg.chunks)
    for i in range(cfg.chunks) if chunk is None else [chunk]:
        download_images(
            manifest.filter(pl.Series(which == i)),
            out / f"chunk-{i:04d}",
            workers=cfg.workers,
            resize_short_side=cfg.resize_short_side,
            config=DownloadConfig(
                max_body_bytes=cfg.max_body_bytes, allow_private_hosts=cfg.allow_private_hosts
            ),
            progress=progress,
        )
    done = [out / f"chunk-{i:04d}" for i in range(cfg.chunks)]
    if all((d / "ledger.parquet").exists() for d in done):
        totals: dict[str, int] = {}
        for d in done:
            for status, n in summarize_ledger(d).to_dict()["counts"].items():
                totals[status] = totals.get(status, 0) + int(n)
        n = sum(totals.values())
        summary = {
            "counts": totals,
            "total": n,
            "fraction_available": totals.get("ok", 0) / n if n else 0.0,
        }
        write_json(out / "summary.json", summary)
        write_json(download_summary_path(params, dataset), summary)  # DVC metrics file
    return out


# ---------------------------------------------------------------------------- backbone
def _test_split_input(params: Params, dataset: str) -> DatasetInput | None:
    """The test split a cell is scored on, as its MLflow run's dataset input."""
    root = params.path("data") / dataset
    for name in ("test.npz", "test_sparse.npz"):
        if (root / name).is_file():
            return dataset_input(f"{dataset}/test", root / name)
    return None


def pretrain_backbone(params: Params, backbone: str, *, progress: bool = True) -> Path:
    from pipelines.data import toyworld
    from pipelines.vlp.pretrain import pretrain_clip

    cfg = params.backbones[backbone]
    assert cfg.pretrain is not None
    root = params.path("data") / cfg.pretrain.dataset
    out = params.path("models") / backbone
    images = toyworld.load_images(root, "pretrain", mmap=False)
    captions = toyworld.load_captions(root)
    if cfg.pretrain.recipe == "lit":  # two pretrained towers aligned (pipelines/vlp/lit.py)
        from pipelines.vlp.lit import align_backbone

        return align_backbone(params, backbone, images, captions, out, progress=progress)
    with mlflow_run(
        params,
        "backbones",
        backbone,
        tags={"backbone": backbone, "stage": "pretrain"},
        run_params=cfg.model_dump(mode="json"),
        description=f"tiny CLIP {cfg.model} pre-trained contrastively on {cfg.pretrain.dataset} captions",
        source=f"ovml stage backbone {backbone}",
        system_metrics=True,
    ) as tracker:
        res = pretrain_clip(
            cfg.model,
            images,
            captions,
            out,
            epochs=cfg.pretrain.epochs,
            batch_size=cfg.pretrain.batch_size,
            lr=cfg.pretrain.lr,
            weight_decay=cfg.pretrain.weight_decay,
            warmup_steps=cfg.pretrain.warmup_steps,
            seed=params.seed,
            device=str(resolve_device(params.device)),
            progress=progress,
            on_epoch=lambda epoch, loss: tracker.log_metrics({"pretrain_loss": loss}, step=epoch),
        )
        tracker.log_metrics({"pretrain_seconds": res.seconds})
        for f in ("open_clip_config.json", "open_clip_model.safetensors"):
            if (out / f).is_file() and (out / f).stat().st_size < 64 * 2**20:
                tracker.log_artifact(out / f)
    return out


# ---------------------------------------------------------------------------- features
def build_features(params: Params, dataset: str, backbone: str, *, progress: bool = True) -> Path:
    data_dir = params.path("data") / dataset
    ds = PreparedDataset.load(data_dir)
    bb = load_backbone(params, backbone)
    out = params.path("features") / dataset / backbone
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        root = images_root(params, dataset)
        for split, sp in ds.splits.items():
            source = open_images(
                data_dir,
                split,
                sp.image_ids,
                str(root) if root else None,
                from_config(params.datasets[dataset].transform),
            )
            if hasattr(source, "available"):  # downloaded shards: dead links have no image
                source = source.subset(source.available())
            extract_features(
                bb,
                source,
                tmp / split,
                batch_size=params.backbones[backbone].batch_size,
                progress=progress,
                desc=f"features {dataset}/{split}",
                patches=params.datasets[dataset].features.patches,
            )
    return out


# -------------------------------------------------------------------------------- cell
def make_context(
    params: Params,
    dataset: str,
    variant: str,
    workdir: Path,
    *,
    progress: bool = True,
    log_metrics=None,
    prepared: PreparedDataset | None = None,
) -> CellContext:
    data_dir = params.path("data") / dataset
    ds = prepared or PreparedDataset.load(data_dir)
    bb = params.backbone_for(dataset, variant)
    feat_dir = params.path("features") / dataset / bb
    root = images_root(params, dataset)
    ds = _restrict_to_featurised(ds, feat_dir)
    return CellContext(
        dataset=dataset,
        variant=variant,
        label_space=ds.label_space,
        train_labels=ds.splits["train"].labels,
        test_labels=ds.splits["test"].labels,
        backbone_name=bb,
        device=resolve_device(params.device),
        seed=params.seed_for(variant),
        workdir=workdir,
        load_backbone=lambda: load_backbone(params, bb),
        load_features=lambda split: load_features(feat_dir / split),
        open_images=lambda split: open_images(
            data_dir,
            split,
            ds.splits[split].image_ids,
            str(root) if root else None,
            from_config(params.datasets[dataset].transform),
        ),
        log_metrics=log_metrics or (lambda metrics, step: None),
        progress=progress,
        load_corpus=lambda kind: _load_cell_corpus(params, dataset, variant, kind),
        feature_dir=feat_dir,
        load_relations=lambda: _load_cell_relations(params, dataset, variant, ds),
        feature_mode=params.feature_mode(dataset, variant),
    )


def _load_cell_corpus(params: Params, dataset: str, variant: str, kind: str):
    from pipelines.text.config import cell_corpora
    from pipelines.text.corpora import load_corpus

    names = cell_corpora(params, variant)
    if kind not in names:
        raise KeyError(f"{variant} declares no {kind!r} corpus (it reads {sorted(names)})")
    return load_corpus(params, dataset, names[kind])


def _load_cell_relations(params: Params, dataset: str, variant: str, ds: PreparedDataset):
    from pipelines.relations import load_cell_relations

    return load_cell_relations(params, dataset, variant, ds.label_space.names())


def _restrict_to_featurised(ds: PreparedDataset, feat_dir: Path) -> PreparedDataset:
    """Keep only the images the feature cache has (dead links have none); the counts of
    images a cell used land in its metrics.json."""
    from pipelines.data.prepared import Split
    from pipelines.io import read_json

    splits = dict(ds.splits)
    for name, sp in ds.splits.items():
        index = feat_dir / name / "index.json"
        if not index.exists():
            continue
        have = read_json(index)["image_ids"]
        if len(have) == len(sp.image_ids):
            continue
        keep = np.isin(sp.image_ids, np.asarray(have, dtype=str))
        labels = sp.labels[keep] if isinstance(sp.labels, np.ndarray) else sp.labels.take(keep)
        splits[name] = Split(sp.image_ids[keep], labels)
    if all(splits[k] is ds.splits[k] for k in splits):
        return ds
    return PreparedDataset(ds.name, ds.label_space, splits, ds.manifest, ds.meta)


def _feature_transform(feat_dir: Path | None) -> dict | None:
    """The image transform a feature cache records in its test split's index.json."""
    from pipelines.io import read_json

    index = feat_dir / "test" / "index.json" if feat_dir is not None else None
    return read_json(index).get("transform") if index is not None and index.exists() else None


def clear_checkpoints(work: Path) -> None:
    """Remove the trainer's checkpoints of a cell workdir (only what the trainer writes)."""
    import shutil

    from pipelines.train import CHECKPOINT_PREFIX, LATEST

    (work / LATEST).unlink(missing_ok=True)
    for ckpt in work.glob(f"{CHECKPOINT_PREFIX}*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt)
    for tmp in work.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def run_cell(
    params: Params,
    dataset: str,
    variant: str,
    *,
    progress: bool = True,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """Train (if the method trains) and evaluate one cell; write its folder atomically.

    Under torchrun every rank trains (the trainer wraps the module in DDP); rank 0 alone
    predicts, evaluates, writes the cell folder and logs the MLflow run; the other ranks
    return ``{}`` once training is done."""
    main = is_main_process()
    base, _ = split_seed(variant)  # one training seed of a variant: <variant>@s<seed>
    seed = params.seed_for(variant)
    var = params.variants[base]
    config = params.method_config(variant)
    method = method_class(var.method)(config)
    out = cell_dir(params, dataset, variant)
    work = params.path("results") / ".work" / dataset / variant  # checkpoints survive a kill
    work.mkdir(parents=True, exist_ok=True)
    if from_scratch and main:  # `--force`: train again, resume nothing
        clear_checkpoints(work)
    torch.manual_seed(seed)
    np.random.seed(seed)
    backbone = params.backbone_for(dataset, variant)
    run_params = {
        "dataset": dataset,
        "variant": variant,
        "method": var.method,
        "backbone": backbone,
        "seed": seed,
        "config": config.model_dump(mode="json"),
        "eval": params.datasets[dataset].eval.model_dump(mode="json"),
    }
    trains = type(method).fit is not Method.fit
    tags = {
        "dataset": dataset,
        "variant": variant,
        "method": var.method,
        "backbone": backbone,
        "seed": str(seed),
    }
    tracking = (
        mlflow_run(
            params,
            f"ovml/{dataset}",
            variant,
            tags=tags,
            run_params=run_params,
            description=var.description,
            source=f"ovml stage cell {dataset} {variant}",
            system_metrics=trains,
            dataset=_test_split_input(params, dataset),
        )
        if main
        else contextlib.nullcontext(Tracker(None))
    )
    with tracking as tracker:
        prepared = _restrict_to_featurised(
            PreparedDataset.load(params.path("data") / dataset),
            params.path("features") / dataset / backbone,
        )
        ctx = make_context(
            params,
            dataset,
            variant,
            work,
            progress=progress,
            log_metrics=tracker.log_metrics,
            prepared=prepared,
        )
        t0 = time.time()
        fit_summary = method.fit(ctx)
        if not main:
            return {}
        t1 = time.time()
        scores = np.asarray(method.predict(ctx), dtype=np.float32)
        t2 = time.time()
        expected = (len(ctx.test_labels), ctx.n_labels)
        if scores.shape != expected:
            raise ValueError(f"{var.method}.predict returned {scores.shape}, expected {expected}")
        if not np.isfinite(scores).all():
            raise ValueError(f"{var.method}.predict returned non-finite scores")
        metrics = evaluate_scores(
            scores, ctx.test_labels, ctx.n_seen, params.datasets[dataset].eval
        )
        metrics["meta"].update(
            {
                "dataset": dataset,
                "variant": variant,
                "method": var.method,
                "backbone": backbone,
                "seed": seed,
                "config": config.model_dump(mode="json"),
                "seconds_fit": round(t1 - t0, 2),
                "seconds_predict": round(t2 - t1, 2),
                "fit": fit_summary,
                "mlflow_run_id": tracker.run_id,
                "mlflow_experiment_id": tracker.experiment_id,
                "n_seen": ctx.n_seen,
                "n_unseen": ctx.n_labels - ctx.n_seen,
                "n_train_images": int(len(ctx.train_labels)),
                "n_test_images": int(len(ctx.test_labels)),
                # what made the features it read (None: a cache older than the record)
                "image_transform": _feature_transform(ctx.feature_dir),
            }
        )
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            save_npz(
                tmp / "scores.npz",
                scores=scores,
                image_ids=np.asarray(prepared.splits["test"].image_ids, dtype=str),
            )
            state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
            if state:
                save_file(state, str(tmp / "model.safetensors"))
            write_json(tmp / "metrics.json", metrics)
        flat = {
            f"{task}_{k}": v
            for task in ("zsl", "gzsl", "all")
            for k, v in metrics.get(task, {}).items()
        }
        tracker.log_metrics({k.replace("@", "_at_"): v for k, v in flat.items()})
        tracker.log_artifact(out / "metrics.json")
        if (out / "scores.npz").stat().st_size <= 64 * 2**20:  # real test sets: too big
            tracker.log_artifact(out / "scores.npz")
        log_cell_figures(
            tracker,
            scores,
            ctx.test_labels,
            ctx.n_seen,
            list(ctx.label_space.names()),
            params.datasets[dataset].eval.zero_positive,
        )
    return metrics
