"""Text corpora: parsers, the offline provider, the response cache (rerun, resume), the
OpenAI provider against a local stub server with injected faults, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest

import pipelines.data.toyworld as tw
from pipelines.config import load_params
from pipelines.text import prompts as P
from tests.conftest import TINY_PARAMS, write_params
from tests.llm_stub_server import StubLLMServer

CORPORA = {
    "comc-sentences": {"kind": "comc-sentences", "n_sentences": 300},
    "class-descriptions": {"kind": "class-descriptions", "n_attributes": 3},
    "category-relations": {"kind": "category-relations", "n_queries": 2, "top_k": 4},
}


def make_params(root, corpora=None, **provider):
    d = copy.deepcopy(TINY_PARAMS)
    d["tracking"] = {"enabled": False}
    d["datasets"]["toyworld"]["options"].update(n_pretrain=10, n_train=40, n_test=20, image_size=32)
    d["corpora"] = copy.deepcopy(corpora or CORPORA)
    if provider:
        for c in d["corpora"].values():
            c["provider"] = dict(provider)
    return load_params(write_params(root, d))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from pipelines.cells import build_dataset

    root = tmp_path_factory.mktemp("text")
    params = make_params(root)
    build_dataset(params, "toyworld", progress=False)
    return root


def fresh(workspace, tmp_path, name="ws", **kw):
    """A workspace sharing the generated dataset (symlink) with its own corpora folder."""
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    (root / "data" / "toyworld").symlink_to(workspace / "data" / "toyworld")
    return make_params(root, **kw)


def build(params, name):
    from pipelines.text.corpora import build_corpus, corpus_meta, load_corpus

    folder = build_corpus(params, "toyworld", name, progress=False)
    return load_corpus(params, "toyworld", name), corpus_meta(folder)


# ------------------------------------------------------------------------------ parsers
def test_parse_sentence_strips_chat_decoration_and_rejects_refusals():
    assert P.parse_sentence('Sure! Here\'s a brief sentence:\n\n"A red fish in the sea."') == (
        "A red fish in the sea."
    )
    assert P.parse_sentence("Sentence: A dog on a sofa.") == "A dog on a sofa."
    for bad in ("I'm sorry, but I can't help with that.", "", "Okay!", "Cat."):
        with pytest.raises(P.ParseError):
            P.parse_sentence(bad)


def test_parse_list_numbered_bulleted_and_none():
    assert P.parse_list("Here:\n\n1. **Four** legs.\n2) A long neck\n") == [
        "Four legs",
        "A long neck",
    ]
    assert P.parse_list("- a\n* b\n• c") == ["a", "b", "c"]
    assert P.parse_list("There are no common subcategories of sky.") == []
    with pytest.raises(P.ParseError):
        P.parse_list("Giraffes are tall animals.")


def test_parse_relations_reads_the_papers_example_output():
    text = (
        "Related Category 1: natural\n\n- **Type of Relationship:** Synonymy/Similarity\n"
        "- **Association Strength:** High\n- **Explanation:** ...\n\n"
        "Related Category 2: **fauna**\n\n- **Type of Relationship:** Is-a/Hypernym\n"
        "- **Association Strength:** Low\n- **Explanation:** ..."
    )
    rels = P.parse_relations(text)
    assert [(r.category, r.relation, r.score) for r in rels] == [
        ("natural", "Synonymy/Similarity", 3),
        ("fauna", "Is-a/Hypernym", 1),
    ]
    with pytest.raises(P.ParseError):
        P.parse_relations("Related Category 1: cliff\n- **Explanation:** no strength given")
    prompt = P.relations_prompt("nature", ["cliff", "insect"])
    assert P.relations_prompt_fields(prompt) == ("nature", ["cliff", "insect"])
    assert "**nature**" in prompt and "List of Seen Categories:\n\ncliff, insect" in prompt


# ------------------------------------------------------------------------ the offline LLM
def test_offline_answers_are_deterministic_and_use_the_knowledge(workspace):
    from pipelines.text.knowledge import load_knowledge
    from pipelines.text.offline import OfflineLLM

    names = tw.label_space().names()
    k = load_knowledge(workspace / "data" / "toyworld", names, None)
    assert k.source == "toyworld generator"
    llm = OfflineLLM(k)
    msgs = [{"role": "user", "content": P.comc_prompt(["red fish", "water"])}]
    a = llm.answer(msgs, 0.7, 5)
    assert a == llm.answer(msgs, 0.7, 5)
    answers = {llm.answer(msgs, 0.7, s) for s in range(20)}
    assert len(answers) > 3  # sampling varies with the seed
    ok = [P.parse_sentence(x) for x in answers if "sorry" not in x and "AI" not in x]
    assert all("red fish" in s and "water" in s for s in ok)
    rel = llm.related("fish", names[: tw.label_space().n_seen])
    top = {name for name, _, strength, _ in rel if strength == 3}
    assert {"animal", "water"} <= top  # hypernym and the scene it lives in
    assert "small" not in top  # frequent everywhere is not "related"


def test_description_sentences_read_like_an_llm():
    d = P.description_sentence
    assert d("monkey", "attribute", "Black and brown") == "a monkey, which is black and brown."
    assert d("bicycle", "attribute", "Two wheels") == "a bicycle, which has two wheels."
    assert (
        d("battery", "attribute", "May have several cells")
        == "a battery, which may have several cells."
    )
    assert d("battery", "superclass", "objects") == "a battery, which is a kind of object."
    assert (
        d("monkey", "superclass", "animals and nature")
        == "a monkey, which belongs to animals and nature."
    )
    assert d("orca", "superclass", "mammal") == "an orca, which is a kind of mammal."
    assert d("objects", "subclass", "battery") == "a battery, which is a kind of object."
    assert (
        d("objects", "attribute", "Often white or grey")
        == "objects, which are often white or grey."
    )
    assert (
        d("mammal", "attribute", "Such as a dog or a whale")
        == "a mammal, such as a dog or a whale."
    )
    assert (
        d("sky", "attribute", "often seen with a bird")
        == "the sky, which is often seen with a bird."
    )
    assert (
        d("bicycle", "scene", "City Street - urban setting with shops")
        == "a bicycle, which appears together with the city street, urban setting with shops."
    )
    assert P.chain_sentence("poodle", "dog", "mammal") == (
        "a poodle, which is a kind of dog, which is a kind of mammal."
    )
    assert [P.singular(x) for x in ("objects", "activities", "glass", "food and drink")] == [
        "object",
        "activity",
        "glass",
        "food and drink",
    ]


def _iconlike_knowledge():
    """A hand-made knowledge in iconworld's shape: WordNet glosses, icon colours, Unicode
    group labels (plural names), backgrounds as scenes."""
    from pipelines.text.knowledge import Knowledge, LabelKnowledge, _derive

    names = ["monkey", "dog", "battery", "mammal", "animal", "objects", "grass", "forest"]
    L = LabelKnowledge
    labels = {
        "monkey": L(
            parents=["mammal", "animal"],
            gloss="any of various long-tailed primates (excluding the prosimians)",
            hypernyms=["primate", "mammal", "animal", "organism", "whole", "entity"],
            attributes=["black", "brown"],
            scenes=["grass", "forest"],
        ),
        "dog": L(
            parents=["mammal", "animal"],
            keywords=["domestic dog", "face"],
            gloss="a member of the genus Canis",
            attributes=["yellow"],
            scenes=["grass"],
        ),
        "battery": L(
            parents=["objects"],
            gloss="a device that produces electricity; may have several cells",
            hypernyms=["device", "artifact", "whole", "object", "entity"],
            attributes=["white"],
        ),
        "mammal": L(parents=["animal"]),
        "animal": L(),
        "objects": L(),
        "grass": L(),
        "forest": L(),
    }
    cooc = np.array(
        [  # monkey dog battery mammal animal objects grass forest
            [20, 8, 1, 20, 20, 1, 12, 8],
            [8, 20, 1, 20, 20, 1, 15, 5],
            [1, 1, 20, 2, 2, 20, 6, 6],
            [20, 20, 2, 40, 40, 2, 27, 13],
            [20, 20, 2, 40, 40, 2, 27, 13],
            [1, 1, 20, 2, 2, 20, 6, 6],
            [12, 15, 6, 27, 27, 6, 40, 0],
            [8, 5, 6, 13, 13, 6, 0, 40],
        ],
        dtype=float,
    )
    _derive(labels, names, cooc)
    return Knowledge(names, labels, cooc, "test")


def test_offline_descriptions_of_iconworld_like_knowledge():
    from pipelines.text.offline import OfflineLLM

    llm = OfflineLLM(_iconlike_knowledge())
    rng = np.random.default_rng(0)

    def sentences(label, kind, n=5):
        return [
            P.description_sentence(label, kind, x)
            for x in P.parse_list(llm.describe(kind, label, n, rng))
        ]

    monkey = sentences("monkey", "attribute")
    assert "a monkey, which is black and brown." in monkey
    assert "a monkey, which is any of various long-tailed primates." in monkey  # gloss, no "(...)"
    assert "a dog, which is also called a domestic dog." in sentences("dog", "attribute")
    battery = sentences("battery", "attribute")
    assert "a battery, which may have several cells." in battery
    sup = sentences("monkey", "superclass")
    assert sup[:2] == [
        "a monkey, which is a kind of mammal.",
        "a monkey, which is a kind of animal.",
    ]
    assert "a monkey, which is a kind of primate." in sup
    assert not any(w in s for s in sup for w in ("kind of entity", "kind of whole"))
    assert sentences("battery", "superclass")[0] == "a battery, which is a kind of object."
    assert "objects, such as a battery." in sentences("objects", "attribute")
    assert "a mammal, such as a monkey or a dog." in sentences("mammal", "attribute")
    scenes = sentences("monkey", "scene")
    assert scenes[0].startswith("a monkey, which appears together with the grass")
    assert all("mammal" not in s and "animal" not in s for s in scenes)  # not its own hierarchy
    assert all(
        s.startswith("grass, which appears together with the ") for s in sentences("grass", "scene")
    )
    every = [
        s for lab in llm.k.names for kind in P.DESCRIPTION_PROMPTS for s in sentences(lab, kind)
    ]
    assert not any(
        bad in s
        for s in every
        for bad in (" an objects", " a objects", "which has black", "an animals")
    )


# -------------------------------------------------------------------------- the stage
def test_three_corpora_build_with_the_documented_schemas(workspace, tmp_path):
    params = fresh(workspace, tmp_path)
    sent, meta = build(params, "comc-sentences")
    assert sent.schema == pl.Schema(
        {
            "index": pl.Int32,
            "text": pl.String,
            "labels": pl.List(pl.String),
            "label_ids": pl.List(pl.Int32),
        }
    )
    assert sent.height == 300 and meta["counts"]["failed_prompts"] == 0
    assert meta["counts"]["unparsed"] > 0  # refusals were re-asked, not dropped
    names = tw.label_space().names()
    for row in sent.head(50).iter_rows(named=True):
        assert 1 <= len(row["labels"]) <= 5
        assert [names[i] for i in row["label_ids"]] == row["labels"]
        assert all(lab in row["text"] for lab in row["labels"])

    desc, meta = build(params, "class-descriptions")
    assert set(desc["type"].unique()) == {"attribute", "subclass", "superclass", "scene", "chain"}
    fish = desc.filter(pl.col("label") == "fish")
    assert "a fish, which is a kind of animal." in fish["text"].to_list()
    assert any("which appears together with the water" in t for t in fish["text"])
    rcnn = json.loads(
        (params.path("data") / "corpora/toyworld/class-descriptions/descriptions.json").read_text()
    )
    fish_id = str(names.index("fish"))
    assert rcnn[fish_id]["node_name"] == "fish" and rcnn[fish_id]["candidate_sentences"]

    rel, meta = build(params, "category-relations")
    n_seen = meta["counts"]["seen"]
    assert (rel["related_id"] < n_seen).all()
    assert rel.filter(pl.col("label") == pl.col("related")).height == 0
    edges = rel.filter(pl.col("edge"))
    assert edges.group_by("label_id").len()["len"].max() <= 4
    graph = np.load(params.path("data") / "corpora/toyworld/category-relations/graph.npz")
    assert graph["edges"].shape == (edges.height, 2)
    assert graph["scores"].shape == (len(names), n_seen) and graph["scores"].max() <= 3


def test_rerun_asks_nothing_and_a_killed_run_resumes(workspace, tmp_path):
    params = fresh(workspace, tmp_path)
    first, meta1 = build(params, "comc-sentences")
    again, meta2 = build(params, "comc-sentences")
    assert (
        meta2["counts"]["fetched"] == 0
        and meta2["counts"]["cache_hits"] == meta1["counts"]["requests"]
    )
    assert again.equals(first)
    # a kill mid-run: half the cache survives, the last line torn mid-write
    cache = params.path("data") / "corpora/toyworld/comc-sentences/cache.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    keep = len(lines) // 2
    cache.write_text("".join(lines[:keep]) + lines[keep][:40])
    (cache.parent / "corpus.parquet").unlink()
    resumed, meta3 = build(params, "comc-sentences")
    assert meta3["counts"]["cache_torn_lines"] == 1
    assert meta3["counts"]["fetched"] == len(lines) - keep
    assert resumed.equals(first)


def test_bigger_corpus_extends_the_smaller_one(workspace, tmp_path):
    small, _ = build(fresh(workspace, tmp_path, "a"), "comc-sentences")
    big_params = fresh(
        workspace,
        tmp_path,
        "b",
        corpora={"comc-sentences": {**CORPORA["comc-sentences"], "n_sentences": 450}},
    )
    big, _ = build(big_params, "comc-sentences")
    assert big.head(small.height).equals(small)


# ----------------------------------------------------- the openai provider, stub server
def test_openai_provider_through_a_faulty_server_equals_the_offline_corpus(
    workspace, tmp_path, monkeypatch
):
    from pipelines.text.knowledge import load_knowledge
    from pipelines.text.offline import OfflineLLM

    offline, _ = build(fresh(workspace, tmp_path, "off"), "comc-sentences")
    k = load_knowledge(workspace / "data" / "toyworld", tw.label_space().names(), None)
    monkeypatch.setenv("OVML_TEST_LLM_KEY", "sk-test-secret-123")
    with StubLLMServer(OfflineLLM(k), fault_every=3) as server:
        params = fresh(
            workspace,
            tmp_path,
            "api",
            corpora={"comc-sentences": CORPORA["comc-sentences"]},
            kind="openai",
            model="offline-knowledge",
            base_url=server.base_url,
            api_key_env="OVML_TEST_LLM_KEY",
            timeout_s=0.5,
            backoff_s=0.0,
            max_retries=4,
            concurrency=4,
        )
        online, meta = build(params, "comc-sentences")
    assert online.equals(offline)
    faults = meta["faults"]
    for kind, counted in (
        ("429", "rate_limited"),
        ("500", "server_error"),
        ("timeout", "timeout"),
        ("malformed", "malformed"),
    ):
        assert server.stats[kind] > 0, kind
        assert faults.get(counted, 0) >= server.stats[kind], (kind, faults, server.stats)
    assert meta["tokens"]["prompt"] > 0 and meta["api_key_env"] == "OVML_TEST_LLM_KEY"
    assert server.auth_headers == {"Bearer sk-test-secret-123"}
    folder = params.path("data") / "corpora/toyworld/comc-sentences"
    for f in folder.iterdir():  # the key is never written anywhere
        if f.is_file():
            assert b"sk-test-secret-123" not in f.read_bytes(), f


def test_missing_key_unknown_model_refused_endpoint(workspace, tmp_path, monkeypatch):
    from pipelines.text.knowledge import load_knowledge
    from pipelines.text.offline import OfflineLLM
    from pipelines.text.providers import ProviderError

    one = {"comc-sentences": {**CORPORA["comc-sentences"], "n_sentences": 5}}
    monkeypatch.delenv("OVML_NO_SUCH_KEY", raising=False)
    params = fresh(
        workspace, tmp_path, "k", corpora=one, kind="openai", api_key_env="OVML_NO_SUCH_KEY"
    )
    with pytest.raises(ProviderError, match="environment variable OVML_NO_SUCH_KEY is not set"):
        build(params, "comc-sentences")

    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    k = load_knowledge(workspace / "data" / "toyworld", tw.label_space().names(), None)
    with StubLLMServer(OfflineLLM(k), fault_every=10**9) as server:
        params = fresh(
            workspace,
            tmp_path,
            "m",
            corpora=one,
            kind="openai",
            model="gpt-nonexistent",
            base_url=server.base_url,
            api_key_env="OVML_TEST_LLM_KEY",
        )
        with pytest.raises(
            ProviderError, match="does not serve model 'gpt-nonexistent'.*offline-knowledge"
        ):
            build(params, "comc-sentences")
        port = server.httpd.server_address[1]
    params = fresh(
        workspace,
        tmp_path,
        "r",
        corpora=one,
        kind="openai",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env="OVML_TEST_LLM_KEY",
        max_retries=1,
        backoff_s=0.0,
    )
    with pytest.raises(ProviderError, match="cannot connect"):
        build(params, "comc-sentences")
    assert not (params.path("data") / "corpora/toyworld/comc-sentences/corpus.parquet").exists()


def test_retry_after_header_forms():
    from pipelines.text.providers import retry_after_seconds

    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert (
        retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0)
        == 10.0
    )
    assert retry_after_seconds({}) is None


def test_wordnet_knowledge_for_real_label_names_or_a_clear_message(monkeypatch, tmp_path):
    from pipelines.text.knowledge import from_wordnet
    from pipelines.text.wordnet import WordNetUnavailable, wordnet_dir

    if not (wordnet_dir() / "data.noun").exists():
        pytest.skip("WordNet (Debian wordnet-base) is not installed here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    k, unknown = from_wordnet(["giraffe", "traffic light", "dog", "xqzzv"])
    assert unknown == 1
    assert "ruminant" in k["giraffe"].hypernyms and k["giraffe"].gloss
    assert k["giraffe"].group == "animal"
    assert k["dog"].children  # hyponyms: kinds of dog
    monkeypatch.setenv("OVML_WORDNET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(WordNetUnavailable, match="apt-get install wordnet-base"):
        from_wordnet(["dog"])


def test_toyworld_writes_the_dataset_knowledge_contract(workspace):
    """Contract 2: knowledge.json (every label, the fixed keys, parents in the label space)
    and cooccurrence.npz (labels in label-space order, symmetric int32 counts)."""
    from pipelines.io import load_npz, read_json

    root = workspace / "data" / "toyworld"
    names = tw.label_space().names()
    know = read_json(root / "knowledge.json")
    assert list(know["labels"]) == names and know["source"]
    keys = {"parents", "group", "subgroup", "keywords", "synset", "gloss", "hypernyms"}
    for name, entry in know["labels"].items():
        assert set(entry) == keys | {"attributes", "scenes"}, name
        assert set(entry["parents"]) <= set(names), name
    assert know["labels"]["red fish"]["parents"] == ["fish", "red"]
    co = load_npz(root / "cooccurrence.npz")
    assert co["labels"].tolist() == names and co["counts"].dtype == np.int32
    c = co["counts"]
    assert (c == c.T).all() and (np.diag(c) >= c.max(axis=1)).all()
    fish, water, snow = (names.index(n) for n in ("fish", "water", "snow"))
    assert c[fish, water] > 3 * c[fish, snow]  # fish prefer water (the generator's prior)
