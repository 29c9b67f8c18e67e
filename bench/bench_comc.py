"""CoMC over seeds: corpus build time and size, then mean ± std of the "all" / ZSL /
GZSL metrics for zero-shot CLIP and the CoMC rows (Table 4, Figure 3, Figure 2).

Per seed s: the comc-sentences corpus is rebuilt with corpus seed s (a separate corpus
``<name>-s<s>``, same prompts' distribution, other label sets and answers) and the
classifier trained with seed s. Rows that differ only at inference (Table 4's local /
mapping switches, Figure 3's alpha) reuse the seed's trained classifier: training does not
read those options, so this is exactly what their cells compute, trained once.

    .venv/bin/python bench/bench_comc.py [--params params.yaml] [--seeds 0 1 2]
        [--dataset toyworld] [--variant comc] [--out results/bench/comc.json]

Needs the dataset, backbone and feature stages built (e.g. `ovml run toyworld clip_zeroshot`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.config import load_params
from pipelines.evaluate import evaluate_scores
from pipelines.io import write_json

TABLE4 = {
    "comc-no-local-no-map": {"local": False, "mapping": False},
    "comc-no-local": {"local": False},
    "comc-no-map": {"mapping": False},
}
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
FRACTIONS = (0.1, 0.25, 0.5, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="toyworld")
    ap.add_argument("--variant", default="comc")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", action="store_true", help="also Figure 2's corpus fractions")
    ap.add_argument("--out", default="results/bench/comc.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from pipelines.cells import make_context
    from pipelines.methods.clip_zeroshot import ClipZeroShot
    from pipelines.methods.clip_zeroshot import Config as ClipConfig
    from pipelines.methods.comc import CoMC
    from pipelines.text.corpora import build_corpus, corpus_meta

    base = load_params(args.params)
    var = base.variants[args.variant]
    corpus = var.options.get("corpus", "comc-sentences")
    results: dict[str, list[dict]] = {}
    corpora_info = []
    for seed in args.seeds:
        name = f"{corpus}-s{seed}" if seed else corpus
        ccfg = base.corpora[corpus].model_dump(mode="json")
        ccfg.update(seed=seed, datasets=[])
        params = load_params(
            args.params,
            overrides={
                "seed": seed,
                "tracking": {"enabled": False},
                "corpora": {name: ccfg},
                "variants": {args.variant: {"corpus": name}},
            },
        )
        t0 = time.time()
        folder = build_corpus(params, args.dataset, name, progress=False)
        meta = corpus_meta(folder)
        size = (folder / "corpus.parquet").stat().st_size
        corpora_info.append(
            {
                "seed": seed,
                "seconds_this_run": round(time.time() - t0, 1),
                "seconds_recorded": meta["seconds"],
                "fetched": meta["counts"]["fetched"],
                "sentences": meta["counts"]["sentences"],
                "unparsed": meta["counts"]["unparsed"],
                "failed_prompts": meta["counts"]["failed_prompts"],
                "corpus_parquet_bytes": size,
                "cache_bytes": (folder / "cache.jsonl").stat().st_size,
                "warnings": meta["warnings"],
            }
        )
        print("corpus", json.dumps(corpora_info[-1]), flush=True)
        work = params.path("results") / ".work" / args.dataset / f"bench-comc-s{seed}"
        work.mkdir(parents=True, exist_ok=True)
        ctx = make_context(params, args.dataset, args.variant, work, progress=False)
        ev = params.datasets[args.dataset].eval

        def score(label, scores, extra=None, ctx=ctx, ev=ev, seed=seed) -> None:
            m = evaluate_scores(scores, ctx.test_labels, ctx.n_seen, ev)
            results.setdefault(label, []).append(
                {
                    "seed": seed,
                    **{t: m[t] for t in ("all", "zsl", "gzsl") if t in m},
                    **(extra or {}),
                }
            )

        score("clip_zeroshot", ClipZeroShot(ClipConfig(prompts="pool")).predict(ctx))
        cfg = params.method_config(args.variant)
        t1 = time.time()
        method = CoMC(cfg)
        torch.manual_seed(seed)
        fit = method.fit(ctx)
        train_s = round(time.time() - t1, 1)
        score(
            args.variant,
            method.predict(ctx),
            {"train_seconds": train_s, "final_loss": fit["epoch_losses"][-1]},
        )
        print(f"seed {seed}: trained in {train_s}s, loss {fit['epoch_losses'][-1]}", flush=True)

        def variant_of(cfg=cfg, method=method, **over) -> CoMC:
            m = CoMC(cfg.model_copy(update=over))
            m.classifier = method.classifier
            return m

        for row, over in TABLE4.items():
            score(row, variant_of(**over).predict(ctx))
        for a in ALPHAS:
            score(f"alpha={a}", variant_of(alpha=a).predict(ctx))
        if args.fractions:
            for f in FRACTIONS:
                m = CoMC(cfg.model_copy(update={"corpus_fraction": f}))
                torch.manual_seed(seed)
                m.fit(ctx)
                score(f"fraction={f}", m.predict(ctx))
    summary = {}
    for row, runs in results.items():
        summary[row] = {}
        for task in ("all", "zsl", "gzsl"):
            if task not in runs[0]:
                continue
            summary[row][task] = {
                k: {
                    "mean": round(float(np.mean([r[task][k] for r in runs])), 2),
                    "std": round(float(np.std([r[task][k] for r in runs], ddof=1)), 2)
                    if len(runs) > 1
                    else 0.0,
                }
                for k in runs[0][task]
            }
    out = Path(args.out)
    write_json(
        out, {"seeds": args.seeds, "corpora": corpora_info, "summary": summary, "runs": results}
    )
    print(
        f"\n{'row':24s} "
        + " ".join(
            f"{t + ' ' + k:>18s}"
            for t, k in (("all", "mAP"), ("zsl", "mAP"), ("zsl", "F1@3"), ("gzsl", "mAP"))
        )
    )
    for row, s in summary.items():
        cells = []
        for t, k in (("all", "mAP"), ("zsl", "mAP"), ("zsl", "F1@3"), ("gzsl", "mAP")):
            v = s.get(t, {}).get(k)
            cells.append(f"{v['mean']:7.2f} ± {v['std']:5.2f}" if v else "—")
        print(f"{row:24s} " + " ".join(f"{c:>18s}" for c in cells))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
