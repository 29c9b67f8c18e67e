"""Agreement with the papers: does each method beat or trail its paper's reference row on
the embedded world, in the direction the paper reports, beyond 2 std over seeds?

A pair (params.yaml ``agreement.<name>.pairs.<pair>``) names a method variant, the
variant of the row its paper compares it with (QKS: zero-shot CLIP, Table 1; Epsilon:
CLIP-FT, Table 5; ...) and the published numbers of both. For every published metric:

- published direction: sign(method − reference) in the paper;
- measured: per-seed differences d_s = method_s − reference_s (the same seeds for both),
  their mean and sample std; the difference counts only when |mean| > ``sigmas`` × std,
  else it is "within noise" (which does not agree with a published direction);
- k/N per pair: metrics whose measured sign matches the published one.

Each method is also compared with plain zero-shot CLIP (``baseline``), for information.
New pairs (CoMC, RCNn, C2SRT) are declared in params.yaml; no code changes.

Outputs in ``<results>/agreement/<name>/``: agreement.md and agreement.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.config import Params, seeded
from pipelines.io import atomic_path, write_json, write_text


def _metric(params: Params, dataset: str, cell: str, task: str, metric: str) -> float | None:
    from pipelines.workspace import load_cell_metrics

    got = load_cell_metrics(params, dataset, cell)
    if got is None:
        return None
    return got.get(task, {}).get(metric)


def compare(
    params: Params,
    dataset: str,
    seeds: list[int],
    method: str,
    reference: str,
    task: str,
    metric: str,
    sigmas: float,
) -> dict[str, Any]:
    """Measured method and reference (mean, std over seeds) and their paired difference."""
    m = [_metric(params, dataset, seeded(method, s), task, metric) for s in seeds]
    r = [_metric(params, dataset, seeded(reference, s), task, metric) for s in seeds]
    pairs = [(a, b) for a, b in zip(m, r, strict=True) if a is not None and b is not None]
    out: dict[str, Any] = {"seeds": len(pairs)}
    if not pairs:
        return {**out, "sign": None}
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    d = a - b
    ddof = 1 if len(d) > 1 else 0
    sd = float(d.std(ddof=ddof))
    mean = float(d.mean())
    sign = 0 if abs(mean) <= sigmas * sd else int(np.sign(mean))
    return {
        **out,
        "method": float(a.mean()),
        "method_std": float(a.std(ddof=ddof)),
        "reference": float(b.mean()),
        "reference_std": float(b.std(ddof=ddof)),
        "diff": mean,
        "diff_std": sd,
        "sign": sign,
    }


def agreement_rows(params: Params, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows of every pair and published metric, per-pair summaries with k/N)."""
    cfg = params.agreement[name]
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for pair, p in cfg.pairs.items():
        k = n = 0
        missing = False
        for task, metrics in p.published.method.items():
            for metric, pub_m in metrics.items():
                pub_r = p.published.reference.get(task, {}).get(metric)
                if pub_r is None:
                    continue
                pub_sign = int(np.sign(pub_m - pub_r))
                got = compare(
                    params,
                    cfg.dataset,
                    cfg.seeds,
                    p.method,
                    p.reference,
                    task,
                    metric,
                    cfg.sigmas,
                )
                info = compare(
                    params,
                    cfg.dataset,
                    cfg.seeds,
                    p.method,
                    cfg.baseline,
                    task,
                    metric,
                    cfg.sigmas,
                )
                agree = got["sign"] is not None and got["sign"] == pub_sign
                missing |= got["sign"] is None
                n += 1
                k += int(agree)
                rows.append(
                    {
                        "pair": pair,
                        "method": p.method,
                        "reference": p.reference,
                        "task": task.upper(),
                        "metric": metric,
                        "published_method": pub_m,
                        "published_reference": pub_r,
                        "published_sign": pub_sign,
                        **{f"measured_{key}": v for key, v in got.items()},
                        "agrees": agree,
                        "vs_baseline": info,
                    }
                )
        summary.append(
            {
                "pair": pair,
                "method": p.method,
                "reference": p.reference,
                "source": p.source,
                "agree": k,
                "of": n,
                "complete": not missing,
            }
        )
    return rows, summary


def _pm(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.1f} ± {std:.1f}"


def _sign(s: int | None) -> str:
    return {1: "ahead", -1: "behind", 0: "within noise", None: "missing"}[s]


def to_markdown(params: Params, name: str, rows: list[dict], summary: list[dict]) -> str:
    cfg = params.agreement[name]
    lines = [
        f"### {cfg.title}",
        "",
        f"Dataset {cfg.dataset}, seeds {cfg.seeds}; a difference counts beyond "
        f"{cfg.sigmas:g} std of the per-seed differences. Published numbers: "
        f"{cfg.published_dataset} (a reference for the direction, not a target).",
        "",
        "| Pair | Task | Metric | Paper: method vs reference | Measured: method | reference "
        "| difference | direction (paper / here) | agrees | vs zero-shot CLIP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["vs_baseline"]
        vs = "—" if base.get("sign") is None else f"{base['diff']:+.1f} ({_sign(base['sign'])})"
        lines.append(
            f"| {r['pair']} | {r['task']} | {r['metric']} | {r['published_method']:.1f} vs "
            f"{r['published_reference']:.1f} | "
            f"{_pm(r.get('measured_method'), r.get('measured_method_std'))} | "
            f"{_pm(r.get('measured_reference'), r.get('measured_reference_std'))} | "
            f"{_pm(r.get('measured_diff'), r.get('measured_diff_std'))} | "
            f"{_sign(r['published_sign'])} / {_sign(r['measured_sign'])} | "
            f"{'yes' if r['agrees'] else 'no'} | {vs} |"
        )
    lines += [""]
    for s in summary:
        lines.append(
            f"- **{s['pair']}** ({s['method']} vs {s['reference']}, {s['source']}): "
            f"{s['agree']}/{s['of']} agree" + ("" if s["complete"] else " (cells missing)")
        )
    return "\n".join(lines) + "\n"


def render_agreement(params: Params, name: str):
    """Write agreement.md / agreement.json atomically; return the folder."""
    rows, summary = agreement_rows(params, name)
    out = params.path("results") / "agreement" / name
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        write_text(tmp / "agreement.md", to_markdown(params, name, rows, summary))
        write_json(tmp / "agreement.json", {"name": name, "rows": rows, "summary": summary})
    return out
