"""Text corpora: parsers, the offline provider, the response cache (rerun, resume), the
OpenAI provider against a local stub server with injected faults, bad input."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pipelines.data.toyworld as tw
from pipelines.config import load_params
from pipelines.text import prompts as P
from tests.conftest import TINY_PARAMS, write_params
from tests.llm_stub_server import StubLLMServer

REPO_ROOT = Path(__file__).resolve().parents[1]

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
    if not (root / "data" / "toyworld").exists():  # a second call: the same workspace
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
    # an answer that starts like a preamble is still the answer
    assert P.parse_sentence("Here is a dog on a sofa.") == "Here is a dog on a sofa."
    assert P.parse_sentence("Here are two cats on a bed.") == "Here are two cats on a bed."
    assert P.parse_sentence("Here is a sentence describing the photo.\nA dog on a sofa.") == (
        "A dog on a sofa."
    )
    assert P.parse_sentence("Sure.\nA dog on a sofa.") == "A dog on a sofa."
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


# ------------------------------------------------------------- routes, models, endpoints
def _stub(workspace, **kw):
    from pipelines.text.knowledge import load_knowledge
    from pipelines.text.offline import OfflineLLM

    k = load_knowledge(workspace / "data" / "toyworld", tw.label_space().names(), None)
    return StubLLMServer(OfflineLLM(k), **{"fault_every": 10**9, **kw})


def _online(workspace, tmp_path, name, server, n=20, **provider):
    corpora = {"comc-sentences": {**CORPORA["comc-sentences"], "n_sentences": n}}
    return fresh(
        workspace,
        tmp_path,
        name,
        corpora=corpora,
        **{
            "kind": "openai",
            "model": server.model,
            "base_url": server.base_url,
            "api_key_env": "OVML_TEST_LLM_KEY",
            "backoff_s": 0.0,
            "concurrency": 1,
            **provider,
        },
    )


def test_completions_only_model_is_asked_on_the_completions_route(workspace, tmp_path, monkeypatch):
    """davinci-002 answers only /v1/completions: chosen by model family (api: auto), the
    corpus equals the offline one; forcing the chat route fails with the fix in words."""
    from pipelines.text.providers import ProviderError

    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    offline, _ = build(
        fresh(
            workspace,
            tmp_path,
            "off",
            corpora={"comc-sentences": {**CORPORA["comc-sentences"], "n_sentences": 20}},
        ),
        "comc-sentences",
    )
    with _stub(workspace, model="davinci-002", completions_only=True) as server:
        online, meta = build(_online(workspace, tmp_path, "c", server), "comc-sentences")
        assert server.stats["completions"] == meta["counts"]["fetched"] > 0
        assert server.stats["chat"] == server.stats["refused_chat"] == 0
        assert meta["route"] == "completions"
        assert online.equals(offline)
        with pytest.raises(ProviderError, match="not a chat model.*api: completions"):
            build(_online(workspace, tmp_path, "chat", server, api="chat"), "comc-sentences")


def test_reasoning_models_get_max_completion_tokens(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    with _stub(workspace, model="o3-mini", reasoning=True) as server:  # by model family
        _, meta = build(_online(workspace, tmp_path, "o3", server), "comc-sentences")
        assert server.stats["max_completion_tokens"] == meta["counts"]["fetched"] > 0
        assert server.stats["max_tokens"] == server.stats["refused_max_tokens"] == 0
    with _stub(workspace, reasoning=True) as server:  # unknown family: told by the server
        _, meta = build(_online(workspace, tmp_path, "told", server), "comc-sentences")
        assert server.stats["refused_max_tokens"] == 1
        assert server.stats["max_completion_tokens"] == meta["counts"]["fetched"] > 0
        assert meta["faults"]["token_limit_switched"] == 1


def test_the_cache_key_holds_the_endpoint(workspace, tmp_path, monkeypatch):
    """The same model id on a second server is asked again (its answers are its own);
    back on the first server, nothing is asked."""
    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    with _stub(workspace) as first, _stub(workspace) as second:
        _, meta1 = build(_online(workspace, tmp_path, "ws", first), "comc-sentences")
        _, meta2 = build(_online(workspace, tmp_path, "ws", second), "comc-sentences")
        _, meta3 = build(_online(workspace, tmp_path, "ws", first), "comc-sentences")
    assert meta1["counts"]["fetched"] == meta1["counts"]["requests"] > 0
    assert second.stats["ok"] == meta2["counts"]["fetched"] == meta2["counts"]["requests"]
    assert meta3["counts"]["fetched"] == 0 and first.stats["ok"] == meta1["counts"]["fetched"]
    assert meta2["endpoint"] == second.base_url


def test_retry_after_is_honoured_for_429_and_503_within_the_cap_and_quota_is_final(
    workspace, monkeypatch
):
    from pipelines.text.cache import ChatRequest
    from pipelines.text.config import ProviderConfig
    from pipelines.text.providers import OpenAIProvider, ProviderError

    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    req = ChatRequest((("user", P.comc_prompt(["fish"])),), 0.0, 64, 1)
    for retry_after, want in (("120", 5.0), ("2", 2.0)):
        with _stub(workspace, script=("429", "503"), retry_after=retry_after) as server:
            cfg = ProviderConfig(
                kind="openai",
                base_url=server.base_url,
                api_key_env="OVML_TEST_LLM_KEY",
                max_backoff_s=5.0,
                backoff_s=0.0,
            )
            pauses: list[float] = []
            provider = OpenAIProvider(cfg, sleep=pauses.append)
            assert "fish" in provider.complete(req).text
        assert pauses == [want, want], retry_after
        assert provider.faults["rate_limited"] == provider.faults["server_error"] == 1
    with _stub(workspace, script=("quota",)) as server:
        cfg = ProviderConfig(
            kind="openai", base_url=server.base_url, api_key_env="OVML_TEST_LLM_KEY"
        )
        pauses = []
        provider = OpenAIProvider(cfg, sleep=pauses.append)
        with pytest.raises(ProviderError, match="insufficient_quota.*not retried"):
            provider.complete(req)
    assert server.stats["quota"] == 1 and server.stats["ok"] == 0 and pauses == []


def test_replies_from_another_model_are_counted_and_warned(workspace, tmp_path, monkeypatch):
    from pipelines.text.corpora import served_model_counts

    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")
    with _stub(workspace, served_model="default-model") as server:  # chatglm.cpp's server
        _, meta = build(_online(workspace, tmp_path, "other", server), "comc-sentences")
    n = meta["counts"]["requests"]
    assert meta["served_models"] == {"default-model": n}
    assert meta["counts"]["replies_model_differs"] == n > 0
    assert any("another model" in w and "default-model" in w for w in meta["warnings"])
    with _stub(workspace, served_model="offline-knowledge-2024-07-18") as server:
        _, meta = build(_online(workspace, tmp_path, "snap", server), "comc-sentences")
    assert meta["counts"]["replies_model_snapshot"] == meta["counts"]["requests"]
    assert meta["counts"]["replies_model_differs"] == 0
    assert not any("another model" in w for w in meta["warnings"])
    from collections import Counter

    assert served_model_counts("gpt-4o", Counter({"gpt-4o-mini": 2, "gpt-4o-0513": 1})) == {
        "replies_model_snapshot": 1,
        "replies_model_differs": 2,
    }


def test_an_llm_corpus_needs_no_wordnet(workspace, tmp_path, monkeypatch):
    """A real label set (no knowledge.json): the offline provider needs WordNet and says
    so; an LLM provider needs only the label names."""
    import shutil

    from pipelines.text.wordnet import WordNetUnavailable

    monkeypatch.setenv("OVML_WORDNET_DIR", str(tmp_path / "no-wordnet"))
    monkeypatch.setenv("OVML_TEST_LLM_KEY", "x")

    def real_like(name, **kw):
        root = tmp_path / name
        shutil.copytree(
            workspace / "data" / "toyworld",
            root / "data" / "toyworld",
            ignore=shutil.ignore_patterns("knowledge.json", "cooccurrence.npz"),
        )
        return make_params(root, **kw)

    one = {"comc-sentences": {**CORPORA["comc-sentences"], "n_sentences": 10}}
    with pytest.raises(WordNetUnavailable, match="no knowledge.json.*LLM provider"):
        build(real_like("offline", corpora=one), "comc-sentences")
    with _stub(workspace) as server:
        params = real_like(
            "llm",
            corpora=one,
            kind="openai",
            model=server.model,
            base_url=server.base_url,
            api_key_env="OVML_TEST_LLM_KEY",
        )
        df, meta = build(params, "comc-sentences")
    assert df.height == 10 and meta["knowledge_source"].startswith("none")


# -------------------------------------------------------------------- class descriptions
def test_every_subclass_superclass_pair_is_a_chain(workspace, tmp_path):
    desc, _ = build(fresh(workspace, tmp_path), "class-descriptions")
    per = desc.group_by("label_id", "type").len()
    counts: dict[int, dict[str, int]] = {}
    for row in per.iter_rows(named=True):
        counts.setdefault(row["label_id"], {})[row["type"]] = row["len"]
    wide = [c for c in counts.values() if c.get("subclass", 0) and c.get("superclass", 0) > 2]
    assert wide  # labels with children and more than two parents: the case [:2] cut
    for c in counts.values():
        assert c.get("chain", 0) == c.get("subclass", 0) * c.get("superclass", 0), c


SHARED_RCNN = REPO_ROOT.parent / "shared" / "data" / "coco" / "rcnn_llm_descriptions_65.json"


def test_the_released_rcnn_corpus_reads_whole():
    """RCNn's released GPT-4o-mini corpus: 65 classes, 9,864 sentences, 105-284 per class,
    every subclass x superclass pair a chain."""
    from pipelines.text.released import read_released

    if not SHARED_RCNN.exists():
        pytest.skip(f"{SHARED_RCNN} is not here")
    raw = json.loads(SHARED_RCNN.read_text())
    names = [raw[k]["node_name"] for k in sorted(raw, key=int)]
    rel = read_released(SHARED_RCNN, names)
    assert len(rel.rows) == 9864 and rel.entries == 65 and rel.described == set(range(65))
    per = Counter(r["label_id"] for r in rel.rows)
    assert (min(per.values()), max(per.values())) == (105, 284)
    kinds = Counter(r["type"] for r in rel.rows)
    assert kinds["chain"] > 4700 and kinds["scene"] == 1199 and kinds["other"] == 0
    person = [r for r in rel.rows if r["label_id"] == 0]
    subs = {r["item"] for r in person if r["type"] == "subclass"}
    chains = {r["item"] for r in person if r["type"] == "chain"}
    assert "student > living organism" in chains and "student" in subs
    # the label space order does not matter: names carry the match
    shuffled = names[::-1]
    again = read_released(SHARED_RCNN, shuffled)
    assert again.index_differs == 64 and {r["label"] for r in again.rows} == set(names)


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ('{"0": {"node_name": "fish",\n "candidate_sentences": ["a fish."]\n', 3, "not JSON"),
        ('{"0": {"node_name": "fish"}}', 1, r"missing \['candidate_sentences'\]"),
        (
            '{"0": {"node_name": "fish", "candidate_sentences": ["a fish."]},\n'
            ' "x": {"node_name": "water", "candidate_sentences": []}}',
            2,
            "'x' is not a class index",
        ),
        (
            '{"0": {"node_name": "fish",\n "candidate_sentences": [\n "a fish.",\n 3]}}',
            4,
            "non-empty string",
        ),
        ('{"0": {"node_name": "fish", "candidate_sentences": [], "n": 1}}', 1, "unknown keys"),
        ('{\n"0": {"node_name": "unicorn", "candidate_sentences": []}}', 2, "no label"),
        (
            '{"0": {"node_name": "fish", "candidate_sentences": []},\n'
            '"0": {"node_name": "water", "candidate_sentences": []}}',
            2,
            "appears twice",
        ),
        (
            '{"0": {"node_name": "fish", "candidate_sentences": []},\n'
            '"5": {"node_name": "Fish", "candidate_sentences": []}}',
            2,
            "already described",
        ),
    ],
)
def test_a_bad_released_corpus_names_file_and_line(tmp_path, text, line, match):
    from pipelines.text.released import ReleasedCorpusError, read_released

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ReleasedCorpusError, match=rf"bad\.json:{line}: .*{match}"):
        read_released(path, ["water", "fish", "sky"])


def test_a_released_corpus_is_a_corpus_stage_fingerprinted_by_its_content(workspace, tmp_path):
    from pipelines.graph import build_graph, fingerprint

    names = tw.label_space().names()
    file = tmp_path / "released.json"
    entries = {
        str(j): {
            "node_name": n,
            "candidate_sentences": [f"a red {n}, which is a {n}.", f"a {n}, which has a tail."],
        }
        for j, n in enumerate(names[:5])
    }
    file.write_text(json.dumps(entries, indent=1))
    corpora = {
        "released": {"kind": "class-descriptions", "released": str(file), "datasets": ["toyworld"]}
    }
    params = fresh(workspace, tmp_path, "rel", corpora=corpora)
    df, meta = build(params, "released")
    assert df.height == 10 and meta["provider"] == "released"
    assert meta["counts"]["labels_without_description"] == len(names) - 5
    assert set(df["type"]) == {"subclass", "attribute"}
    assert meta["released"]["sha256"] and meta["counts"]["requests"] == 0
    assert not (params.path("data") / "corpora/toyworld/released/cache.jsonl").exists()
    stage = "corpus@toyworld@released"
    graph = build_graph(params)
    assert str(file) in graph[stage].extra_deps
    before = fingerprint(params, graph, stage)
    entries["0"]["candidate_sentences"].append("a thing, which is new.")
    file.write_text(json.dumps(entries, indent=1))
    assert fingerprint(params, build_graph(params), stage) != before
    with pytest.raises(ValueError, match="released.*remove `provider`"):
        make_params(
            tmp_path / "both",
            corpora={"r": {**corpora["released"], "provider": {"kind": "openai"}}},
        )
