"""How much room do a backbone's frozen features leave a trained head? (issue 9's diagnosis)

The papers' trained methods (QKS, Epsilon, C2SRT, CLIP-FT) beat zero-shot CLIP on unseen
labels by learning, on seen labels, a better reading of the frozen image features than the
VLP's own zero-shot matching. That is only possible where the features hold more than
zero-shot matching extracts. This script measures that headroom on seen labels, where a
trained head has all the supervision it gets:

0. random scores (chance: each label's positive rate), the floor of the ZSL target;
1. zero-shot: the prompt-pool label embeddings (QKS Eq. 2) against the global feature;
2. linear probes fitted on the train split's seen labels (sigmoid cross-entropy, as QKS
   Eq. 7, full batch, Adam), on the frozen global feature and on the spatial tokens
   (one shared map, max over tokens, as QKS Eq. 6 reads its queries);
3. the trained cells named with ``--cells`` (their ``scores.npz``), on seen and unseen labels;
4. per label-frequency band (test positives: 1-9, 10-49, 50 and more), zero-shot's and each
   cell's mAP (each cell's scores averaged over the seeds given), seen and unseen apart: where
   a trained head gains and where it loses.

Figures are mAP on the test split's seen (and unseen) labels, in %, and each row's ratio to
zero-shot's, measured in the same run.

    .venv/bin/python bench/bench_headroom.py [--dataset iconworld] [--cells qks-icon@s0 ...]

Needs the dataset, its backbone and its feature cache (`ovml table iconworld-main` builds them).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.cells import load_backbone
from pipelines.config import load_params
from pipelines.data.prepared import PreparedDataset
from pipelines.io import load_npz
from pipelines.metrics import average_precision, mean_average_precision
from pipelines.vlp.features import load_features
from pipelines.vlp.prompts import label_embeddings


def probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, steps: int, seed: int
) -> np.ndarray:
    """A linear map fitted full-batch by sigmoid cross-entropy; (N, D) or (N, P, D) inputs
    (then one map for every token, max over tokens). Inputs are l2-normalised and scaled
    by 10 (about CLIP's cosine range times its logit scale's square root)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x_train.shape[-1], y_train.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)

    def scores(x: torch.Tensor) -> torch.Tensor:
        s = head(10 * F.normalize(x, dim=-1))
        return s.amax(dim=1) if s.dim() == 3 else s

    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(scores(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return scores(x_test).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="iconworld")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--cells", nargs="*", default=[], help="e.g. qks-icon@s0 clip_ft-icon@s0")
    ap.add_argument(
        "--n-train",
        type=int,
        nargs="*",
        default=[],
        help="also fit the probes on the first N train images (how the headroom grows with N)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = load_params(args.params)
    ds = PreparedDataset.load(p.path("data") / args.dataset)
    ns, names = ds.label_space.n_seen, ds.label_space.names()
    ev = p.datasets[args.dataset].eval
    bb_name = p.datasets[args.dataset].backbone
    feats = p.path("features") / args.dataset / bb_name
    train, test = load_features(feats / "train"), load_features(feats / "test")
    y_train = torch.from_numpy(ds.splits["train"].labels[:, :ns] == 1).float()
    y_test = ds.splits["test"].labels

    def m_ap(scores: np.ndarray, cols: slice) -> float:
        return mean_average_precision(
            scores[:, cols], y_test[:, cols], zero_positive=ev.zero_positive, num_threads=1
        )

    seen, unseen = slice(0, ns), slice(ns, len(names))
    with torch.no_grad():
        t = label_embeddings(load_backbone(p, bb_name), names, "pool").float()
    zs = (F.normalize(test.global_.float(), dim=-1) @ t.T).numpy()
    ref = m_ap(zs, seen)
    rnd = np.random.default_rng(0).random(zs.shape).astype(np.float32)
    # the cells first: a wrong name fails before minutes of probes, not after
    loaded = [(cell, cell_scores_of(p, args.dataset, cell)) for cell in args.cells]
    cell_scores: dict[str, list[np.ndarray]] = {}
    for cell, s in loaded:
        cell_scores.setdefault(cell.partition("@")[0], []).append(s)
    rows = [
        ("random scores", f"{m_ap(rnd, seen):.1f}", f"{m_ap(rnd, unseen):.1f}", "—"),
        ("zero-shot (prompt pool)", f"{ref:.1f}", f"{m_ap(zs, unseen):.1f}", "1.00"),
    ]
    for what, xtr, xte in (
        ("linear probe, global feature", train.global_, test.global_),
        ("linear probe, spatial tokens (max)", train.patches, test.patches),
    ):
        runs = [
            m_ap(probe(xtr.float(), y_train, xte.float(), args.steps, s), seen) for s in args.seeds
        ]
        mean, std = float(np.mean(runs)), float(np.std(runs))
        rows.append((what, f"{mean:.1f} ± {std:.1f}", "—", f"{mean / ref:.2f}"))
    for n in args.n_train:  # the same probes on fewer labelled images
        for what, xtr in (("global", train.global_), ("spatial (max)", train.patches)):
            runs = [
                m_ap(probe(xtr[:n].float(), y_train[:n], xte.float(), args.steps, s), seen)
                for s, xte in (
                    (s, test.global_ if what == "global" else test.patches) for s in args.seeds
                )
            ]
            mean, std = float(np.mean(runs)), float(np.std(runs))
            rows.append(
                (
                    f"probe, {what}, first {n} train",
                    f"{mean:.1f} ± {std:.1f}",
                    "—",
                    f"{mean / ref:.2f}",
                )
            )
    for cell, s in loaded:
        rows.append(
            (cell, f"{m_ap(s, seen):.1f}", f"{m_ap(s, unseen):.1f}", f"{m_ap(s, seen) / ref:.2f}")
        )
    print(
        f"{args.dataset} / {bb_name}: {len(train)} train images, {ns} seen and "
        f"{len(names) - ns} unseen labels, {len(test)} test images; mAP in %"
    )
    print(f"{'row':40s} {'seen mAP':>12s} {'unseen mAP':>11s} {'seen / zero-shot':>17s}")
    for r in rows:
        print(f"{r[0]:40s} {r[1]:>12s} {r[2]:>11s} {r[3]:>17s}")
    print(
        f"\ntargets (issue 19): seen probe / zero-shot >= 1.4; spatial probe > global probe; "
        f"zero-shot unseen mAP / random = {m_ap(zs, unseen) / m_ap(rnd, unseen):.1f} (>= 8)"
    )
    print_frequency_bands(zs, {v: np.mean(ss, axis=0) for v, ss in cell_scores.items()}, y_test, ns)


BANDS = ((1, 10), (10, 50), (50, None))


def cell_scores_of(p, dataset: str, cell: str) -> np.ndarray:
    """A cell's test scores; ``cell`` is a variant (``qks-icon``) or a seeded cell
    (``qks-icon@s0``), as ``ovml list`` names them."""
    path = p.path("results") / "cells" / dataset / cell / "scores.npz"
    if not path.is_file():
        raise SystemExit(f"{path}: no scores for cell {cell!r} (run `ovml run {dataset} {cell}`)")
    return load_npz(path)["scores"]


def print_frequency_bands(
    zero_shot: np.ndarray, cells: dict[str, np.ndarray], labels: np.ndarray, n_seen: int
) -> None:
    """Mean per-class AP over the labels whose test positives fall in each band."""
    n_pos = (labels == 1).sum(axis=0)
    parts = {"seen": np.arange(n_seen), "unseen": np.arange(n_seen, labels.shape[1])}
    heads, groups = [], []
    for part, cols in parts.items():
        for lo, hi in BANDS:
            sel = cols[(n_pos[cols] >= lo) & ((n_pos[cols] < hi) if hi else True)]
            heads.append(f"{part} {lo}-{hi - 1 if hi else 'up'} ({len(sel)})")
            groups.append(sel)
    print("\nmAP by label frequency (test positives; number of labels in brackets)")
    print(f"{'row':28s} " + " ".join(f"{h:>17s}" for h in heads))
    for name, s in {"zero-shot": zero_shot, **cells}.items():
        ap = average_precision(s, labels, num_threads=1)
        vals = [f"{np.mean(ap[g]):.1f}" if len(g) else "—" for g in groups]
        print(f"{name:28s} " + " ".join(f"{v:>17s}" for v in vals))


if __name__ == "__main__":
    main()
