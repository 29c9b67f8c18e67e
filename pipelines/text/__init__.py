"""LLM text corpora as pipeline stages.

Modules: ``config`` (params), ``providers`` (``offline`` | ``openai``), ``offline`` (the
knowledge-based stand-in LLM), ``knowledge`` (dataset knowledge.json / WordNet),
``cache`` (content-addressed response cache), ``prompts`` (prompts + parsers),
``corpora`` (the stage builders and readers).

Declaring a corpus (params.yaml)
--------------------------------
::

    corpora:
      comc-sentences:                 # the corpus name; a method's default = its kind
        kind: comc-sentences          # comc-sentences | class-descriptions | category-relations
        n_sentences: 40000            # kind-specific options: pipelines/text/config.py
        provider: {kind: offline}     # or {kind: openai, base_url: ..., model: ...,
                                      #     api_key_env: OPENAI_API_KEY}  (the env var's NAME)

The graph (pipelines/graph.py) builds one stage ``corpus@<dataset>@<name>`` (Dagster
asset ``corpus/<dataset>/<name>``, DVC stage ``corpus__<dataset>__<name>``, folder
``<data>/corpora/<dataset>/<name>/``) for every (dataset, corpus) some cell reads, and
makes those cells depend on it. Changing ``corpora.<name>`` reruns only that corpus and
the cells that read it; a rerun asks the provider nothing it has asked before.

Consuming a corpus (the method side)
------------------------------------
A method module declares the corpus kinds it reads and, if it lets a variant choose
which corpus of that kind, maps kinds to corpus names::

    class MyMethod(Method):
        CORPORA = ("class-descriptions",)           # kinds read via ctx.corpus(kind)

        def corpora(self) -> dict[str, str]:        # optional; default {kind: kind}
            return {"class-descriptions": self.config.corpus}

        def fit(self, ctx):
            df = ctx.corpus("class-descriptions")   # polars.DataFrame, schema below

Outside a cell: ``pipelines.text.corpora.load_corpus(params, dataset, name)``.
``label_id`` columns index the dataset's label space (``ctx.label_space.names()``:
seen labels first, then unseen), so they line up with score and label columns.

Schemas of ``corpus.parquet`` (what ``ctx.corpus(kind)`` returns)
-----------------------------------------------------------------
``comc-sentences`` (CoMC §3.1; one row per sentence with a parsable answer)::

    index       Int32          sentence number (0..n_sentences-1; gaps = failed prompts)
    text        String         the sentence, e.g. "A photo of a red fish in the water."
    labels      List(String)   the label names the prompt asked for (1..5 by default)
    label_ids   List(Int32)    their columns in the label space

``class-descriptions`` (RCNn; one row per sentence)::

    label       String         the class
    label_id    Int32
    type        String         attribute | subclass | superclass | scene | chain
    item        String         the LLM's list item ("four equal sides", "polygon", ...);
                               for chain: "<subclass> > <superclass>"
    text        String         RCNn's sentence: "a X, which has Y." / "a C, which is a X." /
                               "a X, which is a P." / "a X, which appears together with
                               the S." / "a C, which is a X, which is a P."

  plus ``descriptions.json`` = {"<label_id>": {"node_name", "candidate_sentences"}}, the
  shape of ../shared/data/coco/rcnn_llm_descriptions_65.json.

``category-relations`` (C2SRT supp. B.3; one row per (category, related seen category)
with a mean score > 0)::

    label       String         the target category (every label, seen and unseen)
    label_id    Int32
    related     String         a seen category the LLM related to it
    related_id  Int32          its column (< n_seen)
    score       Float64        mean of High/Medium/Low = 3/2/1 (unlisted 0) over n_queries
    rank        Int32          0 = strongest, ties in label order
    edge        Boolean        rank < top_k: an in-edge related -> label of the graph
    relation    String         the most frequent relationship type given

  plus ``answers.parquet`` (every parsed block: label, label_id, query, related,
  related_id, relation, strength, score) and ``graph.npz`` (labels U[C], scores
  float32 [C, n_seen], edges int32 [E, 2] as (source related_id, target label_id)).

Every corpus folder also holds ``meta.json`` (counts, provider, model, tokens, cost,
faults, warnings, samples) and ``cache.jsonl`` (the response cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dagster_metadata(folder: Path, md) -> dict[str, Any]:
    """Asset metadata of a built corpus: counts, provider, tokens, cost, a sample."""
    from pipelines.text.corpora import corpus_meta

    meta = corpus_meta(folder)
    if not meta:
        return {}
    out: dict[str, Any] = {
        "kind": meta["kind"],
        "provider": meta["provider"],
        "model": meta["model"],
        "prompt_tokens": meta["tokens"]["prompt"],
        "completion_tokens": meta["tokens"]["completion"],
        "cost_usd": meta["cost_usd"],
        "seconds": meta["seconds"],
        "warnings": len(meta["warnings"]),
        **{f"n_{k}": v for k, v in meta["counts"].items() if isinstance(v, int | float)},
    }
    sample = "\n".join(f"- {s}" for s in meta.get("samples", []))
    out["sample"] = md(sample or "(empty)")
    return out
