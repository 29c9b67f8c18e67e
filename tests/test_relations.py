"""C2SRT's relation graph as a stage of its own (pipelines/relations.py): which cells read
which graph, one build shared by every cell with the same (dataset, backbone, source, n),
the configured in-degree on disk, the stage's metadata, and a cell that trains on it."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from conftest import TINY_PARAMS, write_params

from pipelines.config import ConfigError, load_params
from pipelines.relations import RelationSpec, cell_relations, stage_metadata

C2SRT_TINY = {
    "method": "c2srt",
    "n_related": 3,
    "heads": 2,
    "max_patches": 4,
    "relations": "similarity",
    "encoder_lr_scale": 0.1,
    "train": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "threads": 1},
}


def _params_dict(**variants) -> dict:
    d = copy.deepcopy(TINY_PARAMS)
    d["tracking"] = {"enabled": False}
    d["variants"].update(variants)
    d["corpora"] = {"category-relations": {"kind": "category-relations", "n_queries": 1}}
    d["tables"]["c2"] = {"title": "c2", "datasets": ["toyworld"], "rows": list(variants)}
    return d


def test_spec_follows_the_variant_and_the_method_defaults(tmp_path):
    d = _params_dict(
        a={"method": "c2srt"},  # the paper's defaults: llm, 16 related
        b={"method": "c2srt", "relations": "random", "n_related": 4},
        off={"method": "c2srt", "ist": False},
        z={"method": "clip_zeroshot"},
    )
    p = load_params(write_params(tmp_path, d))
    assert cell_relations(p, "a") == RelationSpec("llm", 16, "category-relations")
    assert cell_relations(p, "a@s2").name == "llm-n16"  # seeds share the graph
    assert cell_relations(p, "b").name == "random-n4"
    assert cell_relations(p, "off") is None and cell_relations(p, "z") is None
    for name in ("llm-n16", "random-n4", "llm-other-corpus-n2", "cooccurrence-n8"):
        assert RelationSpec.parse(name).name == name
    with pytest.raises(ValueError, match="expected <source>-n<n>"):
        RelationSpec.parse("magic-n3")
    bad = copy.deepcopy(d)
    bad["variants"]["a"]["corpus"] = "nope"
    with pytest.raises(ConfigError, match="not declared under `corpora:`"):
        cell_relations(load_params(write_params(tmp_path / "bad", bad)), "a")


def test_graph_stage_is_built_once_reused_and_has_the_in_degree(tmp_path, tiny_workspace):
    from pipelines.cells import make_context
    from pipelines.graph import build_graph, dvc_yaml
    from pipelines.runner import run_stage, run_stages

    root = tmp_path / "ws"
    root.mkdir()
    for sub in ("data", "models"):  # the built tiny world and CLIP (their records stay fresh)
        shutil.copytree(tiny_workspace.parent / sub, root / sub, symlinks=True)
    d = _params_dict(
        a=C2SRT_TINY,
        b={**C2SRT_TINY, "lambda_dist": 0.5, "alpha": 0.3},  # other settings, same graph
        n4={**C2SRT_TINY, "n_related": 4},
        off={**C2SRT_TINY, "ist": False},
    )
    p = load_params(write_params(root, d))
    g = build_graph(p)
    stage = "relations@toyworld@toy-clip@similarity-n3"
    assert stage in g["cell@toyworld@a"].deps and stage in g["cell@toyworld@b"].deps
    assert "relations@toyworld@toy-clip@similarity-n4" in g["cell@toyworld@n4"].deps
    assert not any(x.startswith("relations@") for x in g["cell@toyworld@off"].deps)
    assert [n for n in g if n.startswith("relations@")] == [
        stage,
        "relations@toyworld@toy-clip@similarity-n4",
    ]
    assert "relations__toyworld__toy-clip__similarity-n3:" in dvc_yaml(p)

    built: list[str] = []

    def runner(params, st):
        if st.kind == "relations":
            built.append(st.name)
        return run_stage(params, st, progress=False)

    rels = [n for n in g if n.startswith("relations@")]
    ran = run_stages(p, rels, runner)
    assert built == rels and "dataset@toyworld" not in ran  # the copied world is reused
    assert run_stages(p, rels, runner) == [] and built == rels  # second run: nothing

    folder = root / g[stage].out
    with np.load(folder / "graph.npz", allow_pickle=False) as z:
        edges, labels, nb = z["edges"], z["labels"], z["neighbours"]
    n_labels = len(labels)
    n_seen = int(json.loads((root / "data/toyworld/meta.json").read_text())["n_seen"])
    assert (np.bincount(edges[:, 1], minlength=n_labels) == 3).all()  # in-degree n, every label
    assert (edges[:, 0] < n_seen).all() and (edges[:, 0] != edges[:, 1]).all()
    assert nb.shape == (n_labels, 3)
    meta = stage_metadata(folder)
    assert meta["n_edges"] == 3 * n_labels and meta["source"] == "similarity"
    assert f"3: {n_labels}" in meta["degree histogram"]["value"]
    assert meta["neighbourhoods"]["value"].count("←") == 6
    rec = json.loads((folder / ".ovml-stage.json").read_text())
    assert rec["metadata"]["n_related"] == 3  # the stage record carries it (Dagster shows it)

    # both cells read the one graph on disk; a cell trains on it and writes no graph of its own
    ga = make_context(p, "toyworld", "a", tmp_path / "wa").relations()
    gb = make_context(p, "toyworld", "b", tmp_path / "wb").relations()
    assert np.array_equal(ga["edges"], gb["edges"]) and np.array_equal(ga["edges"], edges)
    run_stages(p, ["cell@toyworld@a"], runner)
    assert built == rels  # the cell reused the stage
    cell = root / g["cell@toyworld@a"].out
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["meta"]["fit"]["relation_graph"]["in_degree_histogram"] == {"3": n_labels}
    assert not list(cell.rglob("relation-graph.*"))


# ------------------------------------------- the category-relations corpus (C2SRT B.3)
def _prompts_by_label(cache_file) -> dict[str, set[tuple[str, ...]]]:
    from pipelines.text import prompts as P

    out: dict[str, set[tuple[str, ...]]] = {}
    for line in cache_file.read_text().splitlines():
        new, listed = P.relations_prompt_fields(json.loads(line)["messages"][0]["content"])
        out.setdefault(new, set()).add(tuple(listed))
    return out


def test_relation_prompts_page_every_seen_label_past_the_cap(tmp_path):
    """``max_seen_in_prompt`` no longer truncates the seen list to its first labels: each
    query's shuffled pages list every seen label but the category itself exactly once, so
    labels far down the list can be related; without a cap, one prompt lists them all."""
    from collections import Counter

    from pipelines.cells import build_dataset
    from pipelines.data.prepared import PreparedDataset
    from pipelines.text.corpora import build_corpus, corpus_meta, load_corpus
    from tests.test_text_corpora import make_params

    cap, n_queries = 30, 2
    corpora = {
        "paged": {"kind": "category-relations", "n_queries": n_queries, "max_seen_in_prompt": cap},
        "whole": {"kind": "category-relations", "n_queries": 1},
    }
    params = make_params(tmp_path, corpora=corpora)
    build_dataset(params, "toyworld", progress=False)
    folder = build_corpus(params, "toyworld", "paged", progress=False)
    meta, rel = corpus_meta(folder), load_corpus(params, "toyworld", "paged")
    space = PreparedDataset.load(params.path("data") / "toyworld").label_space
    seen = space.names()[: space.n_seen]
    by_label = _prompts_by_label(folder / "cache.jsonl")
    assert set(by_label) == set(space.names())
    for name, pages in by_label.items():
        assert all(len(p) <= cap for p in pages)
        counts = Counter(s for p in pages for s in p)
        assert set(counts) == set(seen) - {name}  # every other seen label ...
        assert set(counts.values()) == {n_queries}  # ... once per query, over its pages
    assert meta["counts"]["max_pages_per_query"] == -(-space.n_seen // cap)  # unseen labels
    assert rel["related_id"].max() > cap  # a related label beyond the first `cap`

    whole = build_corpus(params, "toyworld", "whole", progress=False)
    for name, prompts in _prompts_by_label(whole / "cache.jsonl").items():
        (listed,) = prompts
        assert list(listed) == [s for s in seen if s != name]  # B.3 verbatim: the whole list
    assert corpus_meta(whole)["counts"]["max_pages_per_query"] == 1


def test_relations_answer_cut_at_the_token_limit_keeps_its_complete_blocks():
    from pipelines.text import prompts as P

    block = "Related Category {i}: {c}\n\n- **Type of Relationship:** Co-occurrence\n- **Association Strength:** {s}\n- **Explanation:** ...\n\n"
    text = block.format(i=1, c="reef", s="High") + block.format(i=2, c="boat", s="Low")
    cut = text + "Related Category 3: net\n\n- **Type of Relati"
    assert [(r.category, r.score) for r in P.parse_relations(cut)] == [("reef", 3), ("boat", 1)]
    broken = block.format(i=1, c="reef", s="High").replace("High", "") + block.format(
        i=2, c="boat", s="Low"
    )
    with pytest.raises(P.ParseError):  # a block without strength in the middle is an error
        P.parse_relations(broken)
