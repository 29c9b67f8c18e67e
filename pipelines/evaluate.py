"""Turn a cell's test scores into the metrics.json of DESIGN.md.

ZSL = the unseen columns only; GZSL = seen + unseen; ALL = the dataset's full label set
(``eval.all_labels``), the task of methods trained on no image (CoMC Tables 1-2);
STANDARD = classic multi-label classification, every label seen in training and scored in
test (Epsilon Table 4): only a dataset without unseen labels has it (``nus-wide-81``,
``coco``, ``voc2007``). mAP and P/R/F1@K in percent, with
the options that change numbers (zero-positive classes, kept images, mAP variant)
recorded next to them in ``meta.eval``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.config import EvalConfig
from pipelines.metrics import evaluate_block


def _is_metric(key: str) -> bool:
    return key == "mAP" or key.startswith("mAP_") or "@" in key


def task_columns(n_seen: int, n_labels: int, all_labels: str = "all") -> dict[str, slice]:
    every = slice(n_seen, n_labels) if all_labels == "unseen" else slice(0, n_labels)
    # standard multi-label: all labels seen; a dataset with unseen labels has no such task
    standard = slice(0, n_labels) if n_seen == n_labels else slice(0, 0)
    return {
        "zsl": slice(n_seen, n_labels),
        "gzsl": slice(0, n_labels),
        "all": every,
        "standard": standard,
    }


def evaluate_scores(
    scores: np.ndarray, labels: np.ndarray, n_seen: int, cfg: EvalConfig
) -> dict[str, Any]:
    """{"zsl": {...}, "gzsl": {...}, "meta": {"eval": ...}} for one cell."""
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    out: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    done: dict[tuple[int, int], str] = {}
    for task, cols in task_columns(n_seen, labels.shape[1], cfg.all_labels).items():
        block_scores, block_labels = scores[:, cols], labels[:, cols]
        if block_labels.shape[1] == 0:
            continue
        if (cols.start, cols.stop) in done:  # same columns as an earlier task: same numbers
            out[task], counts[task] = (
                out[done[cols.start, cols.stop]],
                counts[done[cols.start, cols.stop]],
            )
            continue
        done[cols.start, cols.stop] = task
        variants = (cfg.map_variant, *(v for v in cfg.extra_map_variants if v != cfg.map_variant))
        res = evaluate_block(  # "mAP" is the first variant; "mAP_biam" whenever BiAM's is asked
            block_scores,
            block_labels,
            cfg.top_k,
            map_variant=variants,
            zero_positive=cfg.zero_positive,
            keep_images=cfg.keep_images,
        )
        out[task] = {k: round(float(v), 4) for k, v in res.items() if _is_metric(k)}
        has_pos = (block_labels == 1).any(axis=1)
        counts[task] = {
            "images": int(block_labels.shape[0]),
            "images_with_positive": int(has_pos.sum()),
            "classes": int(block_labels.shape[1]),
            "classes_without_positive": int((~(block_labels == 1).any(axis=0)).sum()),
        }
    out["meta"] = {"eval": cfg.model_dump(mode="json"), "counts": counts}
    return out
