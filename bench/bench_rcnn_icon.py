"""RCNn on iconworld: where the Table 3 steps gain or lose (diagnosis, not a table).

From the cached ClearCLIP features (whole image and 2x2 snippets) and the text tower:

1. scoring parts for given class embeddings (plain names = the baseline row; a trained
   cell's ``class_embeddings``): global only (Eq. 3), local only (Eq. 4), Eq. 5, MSSA
   (Eq. 9-10), and Eq. 9's global half alone;
2. class embeddings CNR could aim at, each scored by Eq. 5: the plain prompt, the padded
   initial prompt ("a photo of a monkey monkey monkey."), the mean of the 80 templates, the
   mean of the class's descriptions (§3.4's "mean" straw man) with and without templates,
   and per description type;
3. how close each way of padding a short name to N_c* tokens starts to the plain prompt.

    .venv/bin/python bench/bench_rcnn_icon.py [--cells rcnn-icon-baseline@s0 rcnn-icon-cnr@s0]

Needs the cells named (and so the dataset, backbone, ClearCLIP caches and the
class-descriptions corpus): `ovml table iconworld-rcnn-ablation` builds them all.
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors.torch import load_file

from pipelines.cells import load_backbone
from pipelines.config import load_params
from pipelines.data.prepared import PreparedDataset
from pipelines.evaluate import evaluate_scores
from pipelines.methods import rcnn as R
from pipelines.vlp import clearclip as cc

KEYS = ("mAP", "F1@3", "F1@5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="iconworld")
    ap.add_argument("--cells", nargs="*", default=["rcnn-icon-cnr@s0", "rcnn-icon-cnr-pbl@s0"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = load_params(args.params)
    ds = PreparedDataset.load(p.path("data") / args.dataset)
    labels, ns = ds.splits["test"].labels, ds.label_space.n_seen
    names = ds.label_space.names()
    ev = p.datasets[args.dataset].eval
    bb_name = p.datasets[args.dataset].backbone
    feats = p.path("features") / args.dataset
    whole = cc.load_dense(feats / f"{bb_name}@{cc.tower_name()}" / "test")
    snip = cc.load_dense(feats / f"{bb_name}@{cc.tower_name((2,))}" / "test")
    g, loc = whole.global_.float(), whole.local.float()
    sg, sloc = snip.global_.float(), snip.local.float()
    bb = load_backbone(p, bb_name)
    tau = p.variants["rcnn-icon"].model_dump()["tau_s"]

    def show(tag: str, s: torch.Tensor) -> None:
        m = evaluate_scores(s.numpy().astype(np.float32), labels, ns, ev)
        f = lambda t: " ".join(f"{m[t][k]:5.1f}" for k in KEYS)  # noqa: E731
        print(f"{tag:44s} ZSL {f('zsl')} | GZSL {f('gzsl')}", flush=True)

    print(
        f"{'':44s}     {' '.join(f'{k:>5s}' for k in KEYS)} |      {' '.join(f'{k:>5s}' for k in KEYS)}"
    )
    print("1. scoring parts")
    with torch.no_grad():
        embs = {"plain names": bb.encode_text([f"a photo of a {n}." for n in names]).float()}
        for cell in args.cells:
            st = load_file(
                str(p.path("results") / "cells" / args.dataset / cell / "model.safetensors")
            )
            embs[cell] = st["class_embeddings"].float()
        for name, z in embs.items():
            pg = g @ z.T
            pl_ = R.local_score(torch.einsum("bnd,cd->bcn", loc, z), tau)
            show(f"{name}: global (Eq. 3)", pg)
            show(f"{name}: local (Eq. 4)", pl_)
            show(f"{name}: Eq. 5", (pg + pl_) / 2)
            show(
                f"{name}: MSSA (Eq. 9-10)",
                R.mssa_scores(g, loc, sg, sloc, z, tau, (2,), whole.grid_hw),
            )
            show(f"{name}: Eq. 9 global half only", ((sg @ z.T).amax(1) + pg) / 2)

        print("2. class embeddings CNR could aim at, scored by Eq. 5")

        def eq5(tag: str, z: torch.Tensor) -> None:
            show(tag, R.eq5_scores(g, loc, F.normalize(z.float(), dim=-1), tau))

        eq5("plain prompt 'a photo of a X.'", embs["plain names"])
        eq5(
            "padded init 'a photo of a X X X.'",
            bb.encode_text([f"a photo of a {' '.join([n] * 3)}." for n in names]),
        )
        tpl = torch.stack(
            [bb.encode_text([t(n) for t in OPENAI_IMAGENET_TEMPLATES]) for n in names]
        )
        eq5("mean of the 80 templates", tpl.mean(1))
        df = pl.read_parquet(
            p.path("data") / "corpora" / args.dataset / "class-descriptions" / "corpus.parquet"
        )
        emb = bb.encode_text(df["text"].to_list()).float()
        ids = torch.tensor(df["label_id"].to_list())
        mean_d = torch.stack([emb[ids == j].mean(0) for j in range(len(names))])
        eq5("mean of the descriptions", mean_d)
        both = torch.stack([torch.cat([emb[ids == j], tpl[j]]).mean(0) for j in range(len(names))])
        eq5("mean of descriptions + templates", both)
        for typ in ("attribute", "superclass", "subclass", "chain", "scene"):
            sel = torch.tensor((df["type"] == typ).to_list())
            z = torch.stack(
                [
                    emb[sel & (ids == j)].mean(0)
                    if (sel & (ids == j)).any()
                    else embs["plain names"][j]
                    for j in range(len(names))
                ]
            )
            eq5(f"mean of '{typ}' descriptions only", z)

        print("3. padding a short name to N_c* = 3 tokens: mean cosine to the plain prompt")
        tok = bb.tokenizer
        plain = embs["plain names"]
        for tag, make in (
            (
                "repeat the last token (ours)",
                lambda n, k: f"a photo of a {n}{(' ' + n.split()[-1]) * k}.",
            ),
            ("'a' before the name", lambda n, k: f"a photo of a {'a ' * k}{n}."),
            ("',' before the name", lambda n, k: f"a photo of a {', ' * k}{n}."),
            ("'.' after the name", lambda n, k: f"a photo of a {n}{' .' * k}."),
        ):
            cos = [
                float(bb.encode_text([make(n, 3 - len(tok.encode(n)))]).float()[0] @ plain[j])
                for j, n in enumerate(names)
                if len(tok.encode(n)) < 3
            ]
            print(f"   {tag:34s} {np.mean(cos):.3f} (min {np.min(cos):.3f}, {len(cos)} names)")


if __name__ == "__main__":
    main()
