"""Build a corpus stage (``corpus@<dataset>@<name>``) and read it back.

Folder ``<data>/corpora/<dataset>/<name>/``::

    cache.jsonl      every answer fetched (the response cache; kept across reruns)
    corpus.parquet   the consumer table (schema per kind: pipelines/text/__init__.py)
    meta.json        counts, provider, model, tokens, cost, faults, warnings, samples
    descriptions.json            class-descriptions: RCNn's {i: {node_name, candidate_sentences}}
    answers.parquet, graph.npz   category-relations: per-query answers; scores + edges

``corpus.parquet`` is written last and atomically: it exists only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import pipelines.text.prompts as P
from pipelines.io import atomic_path, read_json, save_npz, write_json
from pipelines.text.cache import ChatRequest, ResponseCache
from pipelines.text.config import (
    CategoryRelationsConfig,
    ClassDescriptionsConfig,
    ComcSentencesConfig,
)
from pipelines.text.knowledge import Knowledge, LabelKnowledge, load_knowledge
from pipelines.text.providers import make_provider

log = logging.getLogger(__name__)
CORPUS_FILE = "corpus.parquet"
CACHE_FILE = "cache.jsonl"
META_FILE = "meta.json"


# ------------------------------------------------------------------------ prompt runner
@dataclass(frozen=True)
class Job:
    id: str  # stable within the corpus (drives the sampling seed)
    prompt: str


@dataclass
class RunStats:
    requests: int = 0
    cache_hits: int = 0
    fetched: int = 0
    unparsed: int = 0  # answers that did not parse (each was re-asked, up to `reask` times)
    failed: int = 0  # prompts with no parsable answer after every re-ask
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unparsed_samples: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    served_models: Counter[str] = field(default_factory=Counter)  # reply's `model` -> count


def request_seed(corpus_seed: int, job_id: str, attempt: int) -> int:
    digest = hashlib.sha256(f"{corpus_seed}|{job_id}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_prompts(
    jobs: list[Job],
    parse: Callable[[Job, str], Any],
    *,
    provider,
    cache: ResponseCache,
    seed: int,
    reask: int,
    progress: bool = True,
    desc: str = "corpus",
) -> tuple[dict[str, Any], RunStats]:
    """Answer every job (cache first), parse, re-ask unparsable answers with a new
    sampling seed up to ``reask`` times. Returns {job id: parsed} and the statistics."""
    cfg = provider.config
    model = getattr(provider, "cache_model", cfg.model)  # offline: versioned answers
    endpoint = getattr(provider, "endpoint", None)  # another server = other answers
    route = getattr(provider, "route", "chat")
    stats = RunStats()
    results: dict[str, Any] = {}
    pending = list(jobs)
    for attempt in range(reask + 1):
        if not pending:
            break
        reqs: dict[str, tuple[Job, ChatRequest]] = {}
        for job in pending:
            req = ChatRequest(
                (("user", job.prompt),),
                cfg.temperature,
                cfg.max_tokens,
                request_seed(seed, job.id, attempt),
            )
            reqs[req.key(cfg.kind, model, endpoint, route)] = (job, req)
        stats.requests += len(reqs)
        missing = [(k, r) for k, (_, r) in reqs.items() if cache.get(k) is None]
        stats.cache_hits += len(reqs) - len(missing)
        if missing:
            bar = tqdm(
                total=len(missing),
                desc=f"{desc} (ask {attempt + 1})",
                disable=not progress,
                unit="req",
                leave=False,
            )
            for key, completion in provider.complete_many(missing):
                cache.put(key, cfg.kind, model, reqs[key][1], completion, endpoint)
                stats.fetched += 1
                bar.update(1)
            bar.close()
        still: list[Job] = []
        for key, (job, _) in reqs.items():
            answer = cache.get(key)
            assert answer is not None
            stats.prompt_tokens += answer.prompt_tokens
            stats.completion_tokens += answer.completion_tokens
            if answer.model is not None:
                stats.served_models[answer.model] += 1
            try:
                results[job.id] = parse(job, answer.text)
            except P.ParseError as err:
                stats.unparsed += 1
                if len(stats.unparsed_samples) < 5:
                    stats.unparsed_samples.append(f"{job.id}: {err}: {answer.text[:160]!r}")
                still.append(job)
        pending = still
    stats.failed = len(pending)
    stats.failed_ids = [j.id for j in pending[:20]]
    return results, stats


# ---------------------------------------------------------------------------- builders
def _mentions(text: str, name: str, keywords: list[str]) -> bool:
    low = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", low) for w in [name, *keywords])


def build_comc_sentences(
    cfg: ComcSentencesConfig, k: Knowledge, run: Callable, out: dict[str, Any]
) -> Any:
    """CoMC §3.1: random label sets (``min_labels``–``max_labels`` labels) -> one sentence
    each, labelled with the labels it was asked for. The label sets of the first N
    sentences do not depend on ``n_sentences``, so a larger corpus extends a smaller one."""
    import polars as pl

    names = k.names
    rng = np.random.default_rng([cfg.seed, 31])
    jobs, asked = [], {}
    for i in range(cfg.n_sentences):
        n = int(rng.integers(cfg.min_labels, cfg.max_labels + 1))
        ids = rng.choice(len(names), size=min(n, len(names)), replace=False)
        asked[f"s{i}"] = [int(j) for j in ids]
        jobs.append(Job(f"s{i}", P.comc_prompt([names[j] for j in ids])))
    parsed, stats = run(jobs, lambda job, text: P.parse_sentence(text))
    rows = [
        {
            "index": int(job.id[1:]),
            "text": parsed[job.id],
            "labels": [names[j] for j in asked[job.id]],
            "label_ids": asked[job.id],
        }
        for job in jobs
        if job.id in parsed
    ]
    df = pl.DataFrame(
        rows,
        schema={
            "index": pl.Int32,
            "text": pl.String,
            "labels": pl.List(pl.String),
            "label_ids": pl.List(pl.Int32),
        },
    )
    count = Counter(j for r in rows for j in r["label_ids"])
    mentioned = Counter(
        j
        for r in rows
        for j in r["label_ids"]
        if _mentions(r["text"], names[j], k.labels[names[j]].keywords)
    )
    never_asked = [names[j] for j in range(len(names)) if count[j] == 0]
    never_mentioned = [names[j] for j in range(len(names)) if count[j] and not mentioned[j]]
    out["warnings"] += [
        *(
            [f"{len(never_asked)} label(s) appear in no sentence: {never_asked[:10]}"]
            if never_asked
            else []
        ),
        *(
            [
                f"{len(never_mentioned)} label(s) are named by no sentence written for them: "
                f"{never_mentioned[:10]}"
            ]
            if never_mentioned
            else []
        ),
    ]
    out["counts"].update(
        {
            "sentences": len(rows),
            "labels": len(names),
            "labels_without_sentence": len(never_asked),
            "labels_never_named": len(never_mentioned),
            "mean_labels_per_sentence": round(float(np.mean([len(r["labels"]) for r in rows])), 3)
            if rows
            else 0.0,
            "sentences_naming_all_labels": int(
                sum(
                    all(_mentions(r["text"], lab, k.labels[lab].keywords) for lab in r["labels"])
                    for r in rows
                )
            ),
        }
    )
    out["samples"] = [f"{r['text']}  <- {r['labels']}" for r in rows[:8]]
    return df, stats


def build_class_descriptions(
    cfg: ClassDescriptionsConfig, k: Knowledge, run: Callable, out: dict[str, Any], folder: Path
) -> Any:
    """RCNn: per class, lists of attributes, subclasses, superclasses and scenes, turned
    into RCNn's sentences ("a X, which is a Y.", "a X, which has Z.", ...), plus one chain
    per subclass x superclass pair ("a C, which is a X, which is a P."), as the authors'
    released corpus has them (every pair: 72.5 chains per class there)."""

    wanted = {
        "attribute": cfg.n_attributes,
        "subclass": cfg.n_subclasses,
        "superclass": cfg.n_superclasses,
        "scene": cfg.n_scenes,
    }
    jobs = [
        Job(f"{kind}:{name}", P.DESCRIPTION_PROMPTS[kind].format(label=name, n=n))
        for name in k.names
        for kind, n in wanted.items()
        if n > 0
    ]
    parsed, stats = run(jobs, lambda job, text: P.parse_list(text))
    rows: list[dict[str, Any]] = []
    for j, name in enumerate(k.names):
        items = {kind: parsed.get(f"{kind}:{name}", []) for kind in wanted}
        for kind in wanted:
            for item in items[kind]:
                rows.append(
                    {
                        "label": name,
                        "label_id": j,
                        "type": kind,
                        "item": item,
                        "text": P.description_sentence(name, kind, item),
                    }
                )
        for child in items["subclass"]:  # every subclass x superclass pair, as released
            for parent in items["superclass"]:
                rows.append(
                    {
                        "label": name,
                        "label_id": j,
                        "type": "chain",
                        "item": f"{child} > {parent}",
                        "text": P.chain_sentence(child, name, parent),
                    }
                )
    df = description_frame(rows)
    per_label = Counter(r["label_id"] for r in rows)
    empty = [k.names[j] for j in range(len(k.names)) if not per_label[j]]
    if empty:
        out["warnings"].append(f"{len(empty)} label(s) have no description: {empty[:10]}")
    out["counts"].update(
        {
            "sentences": len(rows),
            "labels": len(k.names),
            "labels_without_description": len(empty),
            **{f"sentences_{t}": int(c) for t, c in Counter(r["type"] for r in rows).items()},
        }
    )
    out["samples"] = [r["text"] for r in rows[:: max(1, len(rows) // 8)][:8]]
    write_descriptions_json(folder, k.names, rows)
    return df, stats


def write_descriptions_json(folder: Path, names: list[str], rows: list[dict[str, Any]]) -> None:
    """``descriptions.json``: {label_id: {node_name, candidate_sentences}}, the shape of
    RCNn's released corpus, one entry per label (an empty list where none)."""
    sentences: dict[int, list[str]] = {j: [] for j in range(len(names))}
    for r in rows:
        sentences[r["label_id"]].append(r["text"])
    write_json(
        folder / "descriptions.json",
        {
            str(j): {"node_name": name, "candidate_sentences": sentences[j]}
            for j, name in enumerate(names)
        },
    )


def description_frame(rows: list[dict[str, Any]]):
    import polars as pl

    return pl.DataFrame(
        rows,
        schema={
            "label": pl.String,
            "label_id": pl.Int32,
            "type": pl.String,
            "item": pl.String,
            "text": pl.String,
        },
    )


def read_released_class_descriptions(
    cfg: ClassDescriptionsConfig, path: Path, names: list[str], out: dict[str, Any], folder: Path
) -> Any:
    """The class-descriptions corpus from a released file (RCNn's
    ``mscoco_post_llm.json``), validated by :func:`pipelines.text.released.read_released`."""
    from pipelines.text.released import read_released

    rel = read_released(path, names)
    rows = rel.rows
    out["warnings"] += rel.warnings
    per_type = Counter(r["type"] for r in rows)
    empty = [names[j] for j in range(len(names)) if j not in rel.described]
    if empty:
        out["warnings"].append(f"{len(empty)} label(s) have no description: {empty[:10]}")
    out["counts"].update(
        {
            "sentences": len(rows),
            "labels": len(names),
            "labels_without_description": len(empty),
            "released_entries": rel.entries,
            "released_index_differs": rel.index_differs,
            **{f"sentences_{t}": int(c) for t, c in per_type.items()},
        }
    )
    out["released"] = {"path": str(path), "sha256": rel.sha256}
    out["samples"] = [r["text"] for r in rows[:: max(1, len(rows) // 8)][:8]]
    write_descriptions_json(folder, names, rows)
    return description_frame(rows), RunStats()


def relation_pages(
    cfg: CategoryRelationsConfig, name: str, query: int, others: list[int]
) -> list[list[int]]:
    """The seen labels (indices into ``others``' label space) each prompt of one (category,
    query) lists: all of them in order when they fit ``max_seen_in_prompt`` (or it is
    null), else a seeded shuffle split into equal pages of at most that many."""
    cap = cfg.max_seen_in_prompt
    if cap is None or len(others) <= cap:
        return [others]
    rng = np.random.default_rng(request_seed(cfg.seed, f"{name}#q{query}", 0))
    order = [others[i] for i in rng.permutation(len(others))]
    n_pages = -(-len(order) // cap)
    return [[int(x) for x in page] for page in np.array_split(np.asarray(order), n_pages)]


def build_category_relations(
    cfg: CategoryRelationsConfig,
    k: Knowledge,
    run: Callable,
    out: dict[str, Any],
    folder: Path,
    n_seen: int,
) -> Any:
    """C2SRT B.3: for each category, ``n_queries`` answers listing related *seen*
    categories with High/Medium/Low (3/2/1, unlisted 0); mean over the queries; the
    ``top_k`` best become the category's in-edges (sparse, directed, unweighted).

    Each query lists every seen category but the category itself, on one prompt or, past
    ``max_seen_in_prompt``, on pages of one prompt each (:func:`relation_pages`); a pair's
    mean is over the answered prompts that listed it, and an answer naming a seen category
    its prompt did not list is ignored (counted as unknown)."""
    import polars as pl

    names, seen = k.names, k.names[:n_seen]
    seen_pos = {s.lower(): i for i, s in enumerate(seen)}
    prompt_of: dict[str, tuple[int, int, list[int]]] = {}  # job id -> (label, query, listed)
    jobs = []
    for j, name in enumerate(names):
        others = [i for i, s in enumerate(seen) if s != name]
        for q in range(cfg.n_queries):
            split = relation_pages(cfg, name, q, others)
            for pg, listed in enumerate(split):
                job_id = f"{name}#q{q}" if len(split) == 1 else f"{name}#q{q}p{pg}"
                prompt_of[job_id] = (j, q, listed)
                jobs.append(Job(job_id, P.relations_prompt(name, [seen[i] for i in listed])))
    parsed, stats = run(jobs, lambda job, text: P.parse_relations(text))
    answers, unknown = [], 0
    scores = np.zeros((len(names), n_seen), dtype=np.float64)
    shown = np.zeros((len(names), n_seen), dtype=np.int64)  # answered prompts listing the pair
    types: dict[tuple[int, int], Counter] = {}  # (label, related) -> relationship types given
    for job in jobs:
        rels = parsed.get(job.id)
        if rels is None:
            continue
        j, q, listed = prompt_of[job.id]
        name = names[j]
        shown[j, listed] += 1
        allowed = set(listed)
        best: dict[int, int] = {}
        for r in rels:
            s = seen_pos.get(r.category.lower())
            if s is None or s not in allowed:
                unknown += 1
                continue
            best[s] = max(best.get(s, 0), r.score)
            types.setdefault((j, s), Counter())[r.relation] += 1
            answers.append(
                {
                    "label": name,
                    "label_id": j,
                    "query": q,
                    "related": seen[s],
                    "related_id": s,
                    "relation": r.relation,
                    "strength": r.strength,
                    "score": r.score,
                }
            )
        for s, v in best.items():
            scores[j, s] += v
    mean = scores / np.maximum(shown, 1)
    rows, edges = [], []
    for j, name in enumerate(names):
        order = [s for s in np.argsort(-mean[j], kind="stable") if mean[j, s] > 0]
        for rank, s in enumerate(order):
            rows.append(
                {
                    "label": name,
                    "label_id": j,
                    "related": seen[s],
                    "related_id": int(s),
                    "score": float(mean[j, s]),
                    "rank": rank,
                    "edge": rank < cfg.top_k,
                    "relation": types[(j, int(s))].most_common(1)[0][0],
                }
            )
            if rank < cfg.top_k:
                edges.append((int(s), j))
    df = pl.DataFrame(
        rows,
        schema={
            "label": pl.String,
            "label_id": pl.Int32,
            "related": pl.String,
            "related_id": pl.Int32,
            "score": pl.Float64,
            "rank": pl.Int32,
            "edge": pl.Boolean,
            "relation": pl.String,
        },
    )
    pl.DataFrame(
        answers,
        schema={
            "label": pl.String,
            "label_id": pl.Int32,
            "query": pl.Int32,
            "related": pl.String,
            "related_id": pl.Int32,
            "relation": pl.String,
            "strength": pl.String,
            "score": pl.Int32,
        },
    ).write_parquet(folder / "answers.parquet")
    save_npz(
        folder / "graph.npz",
        labels=np.asarray(names, dtype=str),
        scores=mean.astype(np.float32),
        edges=np.asarray(edges, dtype=np.int32).reshape(-1, 2),
    )
    isolated = [names[j] for j in range(len(names)) if not (mean[j] > 0).any()]
    if isolated:
        out["warnings"].append(
            f"{len(isolated)} categories have no related seen category: {isolated[:10]}"
        )
    if unknown:
        out["warnings"].append(f"{unknown} listed categories are not seen categories (ignored)")
    out["counts"].update(
        {
            "categories": len(names),
            "seen": n_seen,
            "prompts": len(jobs),
            "max_pages_per_query": max(
                Counter(x[:2] for x in prompt_of.values()).values(), default=0
            ),
            "answers": len(answers),
            "edges": len(edges),
            "unknown_categories_listed": unknown,
            "categories_without_edge": len(isolated),
        }
    )
    out["samples"] = [
        f"{r['related']} -> {r['label']} ({r['relation']}, {r['score']:.2f})" for r in rows[:8]
    ]
    return df, stats


# ---------------------------------------------------------------------------- the stage
def corpus_dir(params, dataset: str, name: str) -> Path:
    return params.path("data") / "corpora" / dataset / name


def released_path(params, name: str) -> Path | None:
    """The released file a corpus reads (``corpora.<name>.released``, relative to the
    params file), or None when it asks a provider."""
    rel = getattr(params.corpora[name], "released", None)
    if rel is None:
        return None
    path = Path(rel)
    return path if path.is_absolute() else params.root / path


def corpus_knowledge(cfg, dataset_dir: Path, ds) -> Knowledge:
    """What the provider answers from. The offline provider needs the dataset's knowledge
    (knowledge.json, else WordNet for real label sets); an LLM answers from its own, so
    an LLM corpus needs neither (only the label names)."""
    names = ds.label_space.names()
    if cfg.provider.kind != "offline":
        labels = {n: LabelKnowledge() for n in names}
        return Knowledge(names, labels, np.zeros((0, 0)), f"none ({cfg.provider.label})")
    from pipelines.text.wordnet import WordNetUnavailable

    train = ds.splits["train"].labels if "train" in ds.splits else None
    try:
        return load_knowledge(dataset_dir, names, train if isinstance(train, np.ndarray) else None)
    except WordNetUnavailable as err:
        raise WordNetUnavailable(
            f"{dataset_dir.name} has no knowledge.json, so the offline provider answers from "
            f"WordNet: {err}. Or give the corpus an LLM provider (provider: {{kind: openai, "
            "...}), which needs no WordNet"
        ) from None


def build_corpus(params, dataset: str, name: str, *, progress: bool = True) -> Path:
    """Build (or resume) one corpus: the single entry point of CLI, DVC and Dagster."""
    from pipelines.data.prepared import PreparedDataset

    cfg = params.corpora[name]
    data_dir = params.path("data") / dataset
    ds = PreparedDataset.load(data_dir)
    names = ds.label_space.names()
    folder = corpus_dir(params, dataset, name)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out: dict[str, Any] = {"warnings": [], "counts": {}, "samples": []}
    released = released_path(params, name)
    provider = None
    torn = 0
    if released is not None:
        df, stats = read_released_class_descriptions(cfg, released, names, out, folder)
        knowledge_source = f"released file {released.name}"
    else:
        knowledge = corpus_knowledge(cfg, data_dir, ds)
        knowledge_source = knowledge.source
        provider = make_provider(cfg.provider, knowledge)
        with ResponseCache(folder / CACHE_FILE) as cache:

            def run(jobs, parse):
                return run_prompts(
                    jobs,
                    parse,
                    provider=provider,
                    cache=cache,
                    seed=cfg.seed,
                    reask=cfg.reask,
                    progress=progress,
                    desc=f"corpus {dataset}/{name}",
                )

            if cfg.kind == "comc-sentences":
                df, stats = build_comc_sentences(cfg, knowledge, run, out)
            elif cfg.kind == "class-descriptions":
                df, stats = build_class_descriptions(cfg, knowledge, run, out, folder)
            else:
                df, stats = build_category_relations(
                    cfg, knowledge, run, out, folder, ds.label_space.n_seen
                )
            torn = cache.torn_lines
    if stats.failed:
        out["warnings"].append(
            f"{stats.failed} prompt(s) got no parsable answer after {cfg.reask} re-asks "
            f"(e.g. {stats.failed_ids[:3]}); they are left out"
        )
    pc = cfg.provider
    served = served_model_counts(pc.model, stats.served_models)
    if served["replies_model_differs"]:
        others = {m: c for m, c in stats.served_models.most_common(3) if m != pc.model}
        out["warnings"].append(
            f"{served['replies_model_differs']} of {sum(stats.served_models.values())} replies "
            f"name another model than the {pc.model!r} asked for: {others}"
        )
    cost = (
        stats.prompt_tokens / 1000 * pc.usd_per_1k_prompt_tokens
        + stats.completion_tokens / 1000 * pc.usd_per_1k_completion_tokens
    )
    meta = {
        "dataset": dataset,
        "corpus": name,
        "kind": cfg.kind,
        "provider": "released" if released is not None else pc.kind,
        "model": None if released is not None else pc.model,
        "base_url": None if released is not None else pc.base_url,
        "endpoint": getattr(provider, "endpoint", None),
        "route": getattr(provider, "route", None),
        "api_key_env": pc.api_key_env if pc.kind == "openai" and released is None else None,
        "knowledge_source": knowledge_source,
        "released": out.get("released"),
        "config": cfg.model_dump(mode="json"),
        "counts": {
            **out["counts"],
            "rows": df.height,
            "requests": stats.requests,
            "cache_hits": stats.cache_hits,
            "fetched": stats.fetched,
            "unparsed": stats.unparsed,
            "failed_prompts": stats.failed,
            "cache_torn_lines": torn,
            **served,
        },
        "served_models": dict(stats.served_models),
        "tokens": {
            "prompt": stats.prompt_tokens,
            "completion": stats.completion_tokens,
            "approximate": pc.kind == "offline",
        },
        "cost_usd": round(cost, 6),
        "faults": dict(getattr(provider, "faults", {})),
        "seconds": round(time.time() - t0, 2),
        "warnings": out["warnings"],
        "unparsed_samples": stats.unparsed_samples,
        "samples": out["samples"],
    }
    for w in out["warnings"]:
        log.warning("corpus %s/%s: %s", dataset, name, w)
    write_json(folder / META_FILE, meta)
    with atomic_path(folder / CORPUS_FILE) as tmp:
        df.write_parquet(tmp)
    _track(params, dataset, name, meta)
    return folder


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def served_model_counts(requested: str, served: Counter[str]) -> dict[str, int]:
    """Replies by the model that answered: the one asked for, a dated snapshot of it
    (OpenAI answers ``gpt-4o-mini`` with ``gpt-4o-mini-2024-07-18``), or another model
    (a server that ignores the ``model`` field, a proxy routing elsewhere)."""
    out = {"replies_model_snapshot": 0, "replies_model_differs": 0}
    for model, n in served.items():
        if model == requested:
            continue
        tail = model[len(requested) :] if model.startswith(requested) else ""
        key = "replies_model_snapshot" if _SNAPSHOT.fullmatch(tail) else "replies_model_differs"
        out[key] += n
    return out


def _track(params, dataset: str, name: str, meta: dict[str, Any]) -> None:
    from pipelines.tracking import mlflow_run

    with mlflow_run(
        params,
        "corpora",
        f"{dataset}/{name}",
        tags={"dataset": dataset, "corpus": name, "kind": meta["kind"], "stage": "corpus"},
        run_params={"provider": meta["provider"], "model": meta["model"], **meta["config"]},
    ) as tracker:
        flat = {
            **{f"n_{k}": v for k, v in meta["counts"].items() if isinstance(v, int | float)},
            "prompt_tokens": meta["tokens"]["prompt"],
            "completion_tokens": meta["tokens"]["completion"],
            "cost_usd": meta["cost_usd"],
            "seconds": meta["seconds"],
            **{f"fault_{k}": v for k, v in meta["faults"].items()},
        }
        tracker.log_metrics(flat)


# ---------------------------------------------------------------------------- readers
def load_corpus(params, dataset: str, name: str):
    """The corpus table (polars DataFrame) of a built corpus stage."""
    import polars as pl

    path = corpus_dir(params, dataset, name) / CORPUS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: corpus not built; run `ovml stage corpus {dataset} {name}`"
        )
    return pl.read_parquet(path)


def corpus_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    return read_json(path) if path.exists() else {}
