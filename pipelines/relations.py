"""C2SRT's inter-category relation graph (Section 3.4, supplementary B.3) as a stage of its own.

The graph IST propagates over is an artefact: built once per (dataset, backbone, source,
number of related categories) and reused by every cell that reads it, whatever its other
settings or training seed::

    stage   relations@<dataset>@<backbone>@<graph>        (e.g. relations@iconworld@icon-clip@llm-n16)
    folder  <data>/relations/<dataset>/<backbone>/<graph>/
    files   graph.npz     labels U[C], neighbours int64 [C, n], edges int32 [E, 2] as
                          (source, target), scores float32 [C, n_seen] (what the choice ranked),
                          padded bool [E] (chosen by the text-similarity tie-break, not the source)
            summary.json  source, n_related, padded edges, degree histograms, a few neighbourhoods

``<graph>`` is ``<source>-n<n>``; ``source`` is ``llm`` (the ``category-relations`` corpus;
``llm-<corpus>`` for another corpus of that kind), ``random``, ``similarity`` or
``cooccurrence``. The backbone is part of the key because the text embeddings rank the
``similarity`` graph and break ties of the others.

Which cells read a graph is decided without importing a method (torch): a method whose
``Config`` declares a ``relations`` field reads the graph its options name (``relations``,
``n_related``, ``corpus``; none when ``ist`` is false), its defaults read from the source
with ``ast`` as :func:`pipelines.config.method_corpora` does. Module import is light (no
numpy, no torch): pipelines/graph.py and the Dagster definitions import it.

Choices the paper leaves open (documented here, used by every source):

* every label (seen and unseen) receives from exactly ``n`` *seen* labels, never itself
  (B.3: "each category receives from its top-n related seen categories");
* ``llm``: mean High/Medium/Low = 3/2/1 over the corpus's queries, unlisted 0; ties (the
  zeros included, when the LLM lists fewer than n) broken by text-embedding similarity.
  Such an edge is *padded*: the LLM did not list it, text similarity chose it. Padding
  keeps every graph at in-degree exactly n (Figure 4 and Table 4 compare graphs of equal
  n), so the "LLM" graph is partly a similarity graph where the LLM lists fewer than n;
  how much is reported per graph: ``padded_edges`` / ``labels_padded`` in summary.json,
  the stage metadata and the cell's metrics.json, and a ``padded`` flag per edge in
  graph.npz;
* ``random``: one fixed draw (seed :data:`RANDOM_GRAPH_SEED`), shared by every training
  seed, as the LLM graph is one fixed graph: the spread over seeds measures training only;
* ``cooccurrence`` (Figure 10(a), no published number): P(j | i) over the train labels,
  which annotate seen labels only; an unseen label's row is its text similarity (every
  unseen label's edges count as padded, as do seen labels' edges with P(j | i) = 0);
* ``similarity`` and ``random`` pad nothing (their own score ranks every seen label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.stages.spec import RELATIONS_CODE  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import numpy as np
    import torch

SOURCES = ("llm", "random", "similarity", "cooccurrence")
RELATIONS_KIND = "category-relations"  # the corpus kind the llm source reads
RANDOM_GRAPH_SEED = 0
GRAPH_FILE = "graph.npz"
SUMMARY_FILE = "summary.json"
_FIELDS = ("relations", "n_related", "ist", "corpus")  # the Config fields that pick a graph
_NAME = re.compile(r"^(?P<src>llm(?:-(?P<corpus>.+))?|random|similarity|cooccurrence)-n(?P<n>\d+)$")


class RelationsError(ValueError):
    """A variant or stage names a relation graph that cannot exist."""


@dataclass(frozen=True)
class RelationSpec:
    """Which graph: its source, its in-degree n and, for ``llm``, the corpus it reads."""

    source: str
    n_related: int
    corpus: str | None = None

    @property
    def name(self) -> str:
        src = self.source
        if src == "llm" and self.corpus not in (None, RELATIONS_KIND):
            src = f"llm-{self.corpus}"
        return f"{src}-n{self.n_related}"

    @classmethod
    def parse(cls, name: str) -> RelationSpec:
        m = _NAME.match(name)
        if m is None:
            raise RelationsError(
                f"relation graph {name!r}: expected <source>-n<n> with source one of {SOURCES} "
                "(llm-<corpus> for another category-relations corpus)"
            )
        src = m["src"]
        if src.startswith("llm"):
            return cls("llm", int(m["n"]), m["corpus"] or RELATIONS_KIND)
        return cls(src, int(m["n"]))


# ------------------------------------------------------------------------- which cells
def _config_defaults(method: str) -> dict[str, Any]:
    """Literal defaults of the method's ``Config`` fields, read with ``ast`` (no import)."""
    import ast

    from pipelines.config_core import ConfigError, _module_ast, module_constants

    path, tree = _module_ast(method)
    consts = module_constants(tree)
    out: dict[str, Any] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config"):
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.value is None or node.target.id not in _FIELDS:
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in consts:
                    out[node.target.id] = consts[node.value.id]
                    continue
                try:
                    out[node.target.id] = ast.literal_eval(node.value)
                except ValueError:
                    raise ConfigError(
                        f"{path}:{node.lineno}: Config.{node.target.id} must default to a literal"
                    ) from None
    return out


def cell_relations(params, variant: str) -> RelationSpec | None:
    """The relation graph a cell's variant reads (None when its method reads none, or
    when ``ist`` is off). Raises :class:`pipelines.config.ConfigError` on a bad option."""
    from pipelines.config import ConfigError, split_seed
    from pipelines.text.config import require_corpus

    base = split_seed(variant)[0]
    var = params.variants[base]
    defaults = _config_defaults(var.method)
    if "relations" not in defaults:
        return None
    opts = {**defaults, **var.options}
    if not opts.get("ist", True):
        return None
    source, n = opts.get("relations"), opts.get("n_related")
    if source not in SOURCES:
        raise ConfigError(f"variants.{base}.relations: {source!r} is not one of {SOURCES}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"variants.{base}.n_related: {n!r} is not a positive integer")
    if source != "llm":
        return RelationSpec(source, n)
    corpus = str(opts.get("corpus") or RELATIONS_KIND)
    mismatch = f"; relations 'llm' reads a {RELATIONS_KIND} corpus"
    require_corpus(params, base, corpus, RELATIONS_KIND, mismatch)
    return RelationSpec("llm", n, corpus)


def relations_dir(params, dataset: str, backbone: str, name: str) -> Path:
    return params.path("data") / "relations" / dataset / backbone / name


# ------------------------------------------------------------------------ graph science
def top_related(
    scores: np.ndarray, n_seen: int, n: int, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """(C, n) source columns (< n_seen) each label receives from: the n largest ``scores``
    (C, n_seen) excluding the label itself, ties broken by ``tiebreak`` (C, n_seen), then by
    column order."""
    import numpy as np

    c = scores.shape[0]
    if n >= n_seen:
        raise RelationsError(
            f"n_related = {n} needs more than {n} seen labels (this dataset has {n_seen}); "
            "lower n_related"
        )
    key = scores.astype(np.float64).copy()
    tb = np.zeros_like(key) if tiebreak is None else tiebreak.astype(np.float64)
    rows = np.arange(min(c, n_seen))
    key[rows, rows] = -np.inf  # never related to itself
    # lexsort: last key is primary; stable, so equal (score, tiebreak) keep column order
    out = np.empty((c, n), np.int64)
    cols = np.arange(n_seen)
    for i in range(c):  # C rows of a sort each: milliseconds
        order = np.lexsort((cols, -tb[i], -key[i]))
        out[i] = order[:n]
    return out


def text_similarity(text: torch.Tensor, n_seen: int) -> np.ndarray:
    """(C, n_seen) cosine between every label's text embedding and each seen label's."""
    import torch.nn.functional as F

    t = F.normalize(text.float(), dim=-1)
    return (t @ t[:n_seen].T).cpu().numpy()


def llm_scores(df, n_labels: int, n_seen: int) -> np.ndarray:
    """(C, n_seen) mean association scores from a ``category-relations`` corpus table
    (pipelines/text/__init__.py schema); unlisted pairs are 0."""
    import numpy as np

    out = np.zeros((n_labels, n_seen), np.float32)
    if len(df):
        lab = df["label_id"].to_numpy().astype(np.int64)
        rel = df["related_id"].to_numpy().astype(np.int64)
        bad = (lab < 0) | (lab >= n_labels) | (rel < 0) | (rel >= n_seen)
        if bad.any():
            raise RelationsError(
                f"{RELATIONS_KIND} corpus: {int(bad.sum())} rows point outside the label "
                f"space (label_id < {n_labels}, related_id < {n_seen}); rebuild the corpus"
            )
        out[lab, rel] = df["score"].to_numpy().astype(np.float32)
    return out


def cooccurrence_scores(train_labels, n_seen: int, n_labels: int, sim: np.ndarray) -> np.ndarray:
    """P(j | i) = count(i, j) / count(i) over train images, seen labels only; unseen rows (no
    train annotations) are the text similarity to each seen label."""
    import numpy as np

    y = (np.asarray(train_labels[:, :n_seen]) > 0).astype(np.float32)
    counts = y.T @ y  # (S, S)
    cond = counts / np.maximum(np.diag(counts)[:, None], 1.0)
    out = np.empty((n_labels, n_seen), np.float32)
    out[:n_seen] = cond
    out[n_seen:] = sim[n_seen:]
    return out


def build_relation_graph(
    source: str,
    *,
    n_related: int,
    n_seen: int,
    n_labels: int,
    text: torch.Tensor,
    seed: int = RANDOM_GRAPH_SEED,
    train_labels=None,
    corpus=None,
) -> dict[str, np.ndarray]:
    """The IST graph: ``neighbours`` (C, n) source labels per target, ``edges`` (E, 2) as
    (source, target) and ``scores`` (C, n_seen) the association the choice ranked by."""
    import numpy as np

    sim = text_similarity(text, n_seen)
    if source == "llm":
        if corpus is None:
            raise RelationsError("relations 'llm' needs the category-relations corpus")
        scores = llm_scores(corpus, n_labels, n_seen)
        nb = top_related(scores, n_seen, n_related, tiebreak=sim)
    elif source == "similarity":
        scores = sim
        nb = top_related(scores, n_seen, n_related)
    elif source == "cooccurrence":
        if train_labels is None:
            raise RelationsError("relations 'cooccurrence' needs train labels")
        scores = cooccurrence_scores(train_labels, n_seen, n_labels, sim)
        nb = top_related(scores, n_seen, n_related, tiebreak=sim)
    elif source == "random":
        scores = np.random.default_rng(seed + 104729).random((n_labels, n_seen)).astype(np.float32)
        nb = top_related(scores, n_seen, n_related)
    else:
        raise RelationsError(f"unknown relation source {source!r} (one of {SOURCES})")
    tgt = np.repeat(np.arange(n_labels), n_related)
    edges = np.stack([nb.reshape(-1), tgt], axis=1).astype(np.int64)
    return {
        "neighbours": nb.astype(np.int64),
        "edges": edges,
        "scores": scores.astype(np.float32),
        "padded": padded_edges(source, scores, edges, n_seen),
    }


def padded_edges(source: str, scores: np.ndarray, edges: np.ndarray, n_seen: int) -> np.ndarray:
    """(E,) bool: the edges the source's own association did not choose, i.e. filled in by
    the text-similarity tie-break to reach in-degree n. ``llm``: pairs the LLM never listed
    (mean score 0); ``cooccurrence``: pairs never seen together in the train labels, and
    every edge into an unseen label (its row is text similarity); ``similarity`` and
    ``random``: none."""
    import numpy as np

    src, tgt = edges[:, 0], edges[:, 1]
    if source == "llm":
        return scores[tgt, src] <= 0
    if source == "cooccurrence":
        return (tgt >= n_seen) | (scores[tgt, src] <= 0)
    return np.zeros(len(edges), dtype=bool)


def graph_summary(graph: dict[str, np.ndarray], names: list[str], n_seen: int, k: int = 6) -> dict:
    """Degree histograms and a few neighbourhoods (3 seen, 3 unseen labels)."""
    import numpy as np

    edges, nb = graph["edges"], graph["neighbours"]
    c = len(names)
    indeg = np.bincount(edges[:, 1], minlength=c)
    outdeg = np.bincount(edges[:, 0], minlength=c)

    def hist(d: np.ndarray) -> dict[str, int]:
        values, counts = np.unique(d, return_counts=True)
        return {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}

    pick = list(range(min(3, n_seen))) + list(range(n_seen, min(c, n_seen + 3)))
    zero = int(sum((graph["scores"][t, s] <= 0) for s, t in edges))
    padded = graph.get("padded")
    padded = np.zeros(len(edges), bool) if padded is None else np.asarray(padded, bool)
    per_label = np.bincount(edges[padded, 1], minlength=c)
    unseen = per_label[n_seen:]
    return {
        "n_nodes": c,
        "n_edges": int(len(edges)),
        "padded_edges": int(padded.sum()),
        "padded_edges_into_unseen": int(unseen.sum()),
        "labels_padded": int((per_label > 0).sum()),
        "labels_all_padded": int((per_label == nb.shape[1]).sum()) if nb.shape[1] else 0,
        "padded_by": "text similarity" if padded.any() else None,
        "in_degree_histogram": hist(indeg),
        "out_degree_histogram": hist(outdeg[:n_seen]),
        "edges_with_zero_score": zero,
        "neighbourhoods": {names[i]: [names[j] for j in nb[i][:k]] for i in pick},
    }


# ----------------------------------------------------------------------------- the stage
def build_relations(
    params, dataset: str, backbone: str, name: str, *, progress: bool = True
) -> Path:
    """Build one graph stage (the single entry point of CLI, DVC and Dagster)."""
    import numpy as np

    from pipelines.data.prepared import PreparedDataset
    from pipelines.io import atomic_path, write_json
    from pipelines.vlp.prompts import label_embeddings
    from pipelines.workspace import load_backbone

    spec = RelationSpec.parse(name)
    ds = PreparedDataset.load(params.path("data") / dataset)
    names = ds.label_space.names()
    n_seen = ds.label_space.n_seen
    text = label_embeddings(load_backbone(params, backbone), names, "pool")
    corpus = None
    if spec.source == "llm":
        from pipelines.text.corpora import load_corpus

        corpus = load_corpus(params, dataset, spec.corpus)
    train = ds.splits["train"].labels if spec.source == "cooccurrence" else None
    graph = build_relation_graph(
        spec.source,
        n_related=spec.n_related,
        n_seen=n_seen,
        n_labels=len(names),
        text=text,
        train_labels=train,
        corpus=corpus,
    )
    summary = {
        "source": spec.source,
        "corpus": spec.corpus,
        "n_related": spec.n_related,
        "backbone": backbone,
        **graph_summary(graph, names, n_seen),
    }
    folder = relations_dir(params, dataset, backbone, name)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / GRAPH_FILE) as tmp:
        np.savez(
            tmp,
            labels=np.asarray(names, dtype=str),
            neighbours=graph["neighbours"],
            edges=graph["edges"].astype(np.int32),
            scores=graph["scores"],
            padded=graph["padded"],
        )
    write_json(folder / SUMMARY_FILE, summary)
    return folder


def load_graph(folder: Path, names: list[str]) -> dict[str, Any]:
    """A built graph stage's arrays and summary, checked against the cell's label space."""
    import numpy as np

    from pipelines.io import read_json

    path = Path(folder) / GRAPH_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: relation graph not built; run `ovml stage relations "
            f"{' '.join(Path(folder).parts[-3:])}` (or `ovml run` of the cell)"
        )
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if [str(x) for x in arrays["labels"]] != list(names):
        raise RelationsError(
            f"{path}: its labels differ from the dataset's label space; rebuild the graph stage"
        )
    edges = arrays["edges"].astype(np.int64)
    n = arrays["neighbours"].shape[1]
    if len(edges) != len(names) * n or edges.min() < 0 or edges.max() >= len(names):
        raise RelationsError(f"{path}: edges do not form an in-degree-{n} graph; rebuild it")
    out = {
        "neighbours": arrays["neighbours"].astype(np.int64),
        "edges": edges,
        "scores": arrays["scores"],
        "summary": read_json(Path(folder) / SUMMARY_FILE),
    }
    if "padded" in arrays:
        out["padded"] = arrays["padded"].astype(bool)
    return out


def load_cell_relations(params, dataset: str, variant: str, names: list[str]) -> dict[str, Any]:
    """The graph stage a cell reads (pipelines/cells.py hands this to the method)."""
    spec = cell_relations(params, variant)
    if spec is None:
        raise RelationsError(f"{variant} reads no relation graph (ist off, or no relations)")
    bb = params.backbone_for(dataset, variant)
    return load_graph(relations_dir(params, dataset, bb, spec.name), names)


def stage_metadata(folder: Path) -> dict[str, Any]:
    """Metadata of a built graph stage (pipelines/records.py; shown by Dagster)."""
    import json

    try:
        s = json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    hood = "\n".join(f"- **{k}** ← {', '.join(v)}" for k, v in s.get("neighbourhoods", {}).items())
    hist = ", ".join(f"{k}: {v}" for k, v in s.get("in_degree_histogram", {}).items())
    out_hist = ", ".join(f"{k}: {v}" for k, v in s.get("out_degree_histogram", {}).items())
    return {
        "source": s.get("source"),
        "n_related": s.get("n_related"),
        "n_nodes": s.get("n_nodes"),
        "n_edges": s.get("n_edges"),
        "edges_with_zero_score": s.get("edges_with_zero_score"),
        "padded_edges": s.get("padded_edges"),
        "labels_padded": s.get("labels_padded"),
        "degree histogram": {
            "type": "md",
            "value": f"in-degree (degree: labels): {hist}\n\n"
            f"out-degree of seen labels (degree: labels): {out_hist}",
        },
        "neighbourhoods": {"type": "md", "value": hood or "(none)"},
    }
