"""CoMC: Eq. 3 and Eq. 4-5 against plain references; a classifier trained on text alone
recognises images in a synthetic aligned space (and local embeddings + mapping help where
they should); the graph wires corpora to cells; the "all" task."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from pipelines.config import EvalConfig, load_params
from pipelines.data.prepared import Label, LabelSpace
from pipelines.evaluate import evaluate_scores
from pipelines.methods.base import CellContext
from pipelines.methods.comc import CoMC, Config, map_to_text, photo_prompt, ranking_loss
from pipelines.metrics import mean_average_precision
from pipelines.vlp.features import Features
from tests.conftest import TINY_PARAMS, write_params


def test_ranking_loss_matches_the_double_sum_of_eq3():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.normal(size=(4, 6)), dtype=torch.float32)
    targets = torch.tensor(rng.choice([-1, 0, 1], size=(4, 6)), dtype=torch.float32)
    ref = 0.0
    for i in range(4):
        pos = [j for j in range(6) if targets[i, j] > 0]
        neg = [k for k in range(6) if targets[i, k] < 0]
        ref += sum(
            max(0.0, 1.0 - float(scores[i, j] - scores[i, k]))
            for j, k in itertools.product(pos, neg)
        )
    assert float(ranking_loss(scores, targets, 1.0)) == pytest.approx(ref / 4, rel=1e-5)


def test_mapping_is_a_softmax_weighted_sum_of_label_embeddings():
    s = F.normalize(torch.randn(5, 8), dim=-1)
    v = F.normalize(torch.randn(3, 8), dim=-1)
    w = torch.exp(v.double() @ s.double().T / 0.01)  # float64: exp(100) overflows float32
    ref = ((w / w.sum(1, keepdim=True)) @ s.double()).float()
    assert torch.allclose(map_to_text(v, s, 0.01), ref, atol=1e-5)
    hard = map_to_text(s[2:3] + 0.01 * v[:1], s, 1e-4)  # tiny tau: the nearest label's text
    assert torch.allclose(hard, s[2:3], atol=1e-3)
    assert (
        photo_prompt("apple") == "a photo of an apple."
        and photo_prompt("dog") == "a photo of a dog."
    )


# -------------------------------------------------------------- a synthetic aligned space
NAMES = [f"thing{i}" for i in range(12)]
DIM = 32


class FakeBackbone:
    """Text tower = mean of fixed word vectors (+ a shared 'text' offset: a modality gap)."""

    name = "fake"
    embed_dim = DIM

    def __init__(self, vocab_vecs: dict[str, torch.Tensor], gap: torch.Tensor):
        self.vecs, self.gap = vocab_vecs, gap

    def encode_text(self, texts):
        out = []
        for t in texts:
            words = [w.strip(".,") for w in t.lower().split()]
            vs = [self.vecs[w] for w in words if w in self.vecs]
            v = torch.stack(vs).mean(0) if vs else torch.zeros(DIM)
            out.append(F.normalize(v + self.gap, dim=-1))
        return torch.stack(out)


def synthetic(tmp_path, n_test=300, seed=0):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    label_vecs = F.normalize(torch.randn(len(NAMES), DIM, generator=g), dim=-1)
    vecs = {n: label_vecs[i] for i, n in enumerate(NAMES)}
    gap = 0.6 * F.normalize(torch.randn(DIM, generator=g), dim=-1)
    bb = FakeBackbone(vecs, gap)
    # corpus: sentences naming 1-3 labels
    rows = []
    for i in range(2000):
        ids = sorted(rng.choice(len(NAMES), size=int(rng.integers(1, 4)), replace=False).tolist())
        rows.append(
            {
                "index": i,
                "text": "a photo of " + " and ".join(NAMES[j] for j in ids),
                "labels": [NAMES[j] for j in ids],
                "label_ids": ids,
            }
        )
    corpus = pl.DataFrame(
        rows,
        schema={
            "index": pl.Int32,
            "text": pl.String,
            "labels": pl.List(pl.String),
            "label_ids": pl.List(pl.Int32),
        },
    )
    # images: 1-3 objects; each patch shows one object (or background), the global token
    # mixes them and sits on the other side of the modality gap
    labels = -np.ones((n_test, len(NAMES)), dtype=np.int8)
    patches = torch.randn(n_test, 4, DIM, generator=g) * 0.3
    glob = torch.zeros(n_test, DIM)
    for i in range(n_test):
        ids = rng.choice(len(NAMES), size=int(rng.integers(1, 4)), replace=False)
        labels[i, ids] = 1
        for p, j in enumerate(ids):
            patches[i, p] += label_vecs[j]
        weights = torch.tensor(rng.dirichlet(np.ones(len(ids)) * 0.7), dtype=torch.float32)
        glob[i] = (weights[:, None] * label_vecs[ids]).sum(0) - 0.6 * gap
    glob = F.normalize(glob + 0.2 * torch.randn(n_test, DIM, generator=g), dim=-1)
    space = LabelSpace(
        seen=[Label(n, n) for n in NAMES[:8]], unseen=[Label(n, n) for n in NAMES[8:]]
    )
    feats = Features(glob.half(), patches.half(), np.arange(n_test).astype(str))
    ctx = CellContext(
        dataset="synthetic",
        variant="comc",
        label_space=space,
        train_labels=np.zeros((0, len(NAMES)), dtype=np.int8),
        test_labels=labels,
        backbone_name="fake",
        device=torch.device("cpu"),
        seed=seed,
        workdir=tmp_path / "results" / ".work" / "synthetic" / "comc",
        load_backbone=lambda: bb,
        load_features=lambda split: feats,
        open_images=lambda split: None,
        progress=False,
        load_corpus=lambda kind: corpus,
    )
    ctx.workdir.mkdir(parents=True)
    return ctx, labels


def run(ctx, **cfg):
    m = CoMC(Config(epochs=8, lr=5e-3, batch_size=128, **cfg))
    m.fit(ctx)
    return m.predict(ctx)


def test_trained_on_text_only_it_recognises_images(tmp_path):
    ctx, labels = synthetic(tmp_path)
    full = mean_average_precision(run(ctx, alpha=0.5), labels)
    chance = mean_average_precision(np.random.default_rng(0).random(labels.shape), labels)
    glob_only = mean_average_precision(run(ctx, local=False, mapping=False), labels)
    assert full > chance + 30, (full, chance)
    assert full > glob_only + 3, (full, glob_only)  # local embeddings + mapping help here
    # the text embeddings were cached once per (corpus, tower)
    assert len(list((tmp_path / "results" / ".work" / ".text-embeddings").iterdir())) == 1


def test_fraction_and_state(tmp_path):
    ctx, _ = synthetic(tmp_path)
    m = CoMC(Config(epochs=1, corpus_fraction=0.1))
    summary = m.fit(ctx)
    assert summary["sentences"] == 200
    assert set(m.state_dict()) == {"classifier.weight", "classifier.bias"}
    assert m.corpora() == {"comc-sentences": "comc-sentences"}


# ---------------------------------------------------------------------------- the graph
def comc_params(tmp_path, n_sentences=100):
    d = copy.deepcopy(TINY_PARAMS)
    d["tracking"] = {"enabled": False}
    d["variants"]["comc"] = {"method": "comc", "alpha": 0.5}
    d["corpora"] = {"comc-sentences": {"kind": "comc-sentences", "n_sentences": n_sentences}}
    d["tables"]["comc"] = {
        "title": "c",
        "datasets": ["toyworld"],
        "tasks": ["all"],
        "rows": ["comc"],
    }
    return load_params(write_params(tmp_path, d))


def test_a_corpus_change_reruns_the_corpus_and_its_readers_only(tmp_path):
    from pipelines.graph import build_graph, dvc_yaml, fingerprint
    from pipelines.runner import run_stages
    from tests.test_graph import deterministic_stage

    p1 = comc_params(tmp_path / "a")
    g1 = build_graph(p1)
    assert "corpus@toyworld@comc-sentences" in g1["cell@toyworld@comc"].deps
    assert "persist: true" in dvc_yaml(p1)
    p2 = comc_params(tmp_path / "b", n_sentences=200)
    g2 = build_graph(p2)
    changed = {n for n in g1 if fingerprint(p1, g1, n) != fingerprint(p2, g2, n)}
    assert changed == {"corpus@toyworld@comc-sentences"}  # its readers follow its outputs
    # pretend all is built, by a stage whose output follows its params and inputs
    assert run_stages(p1, ["table@comc", "report@all"], deterministic_stage)
    assert run_stages(p1, ["table@comc"], deterministic_stage) == []  # second run: nothing
    p3 = comc_params(tmp_path / "a", n_sentences=200)
    ran = run_stages(p3, ["table@comc", "report@all"], deterministic_stage)
    assert ran == [
        "corpus@toyworld@comc-sentences",
        "cell@toyworld@comc",
        "table@comc",
        "report@all",  # the report shows every table
    ]


def test_a_variant_naming_an_undeclared_corpus_is_a_clear_error(tmp_path):
    from pipelines.config import ConfigError
    from pipelines.graph import build_graph

    d = copy.deepcopy(TINY_PARAMS)
    d["variants"]["comc"] = {"method": "comc", "corpus": "nope"}
    d["tables"]["tiny"]["rows"].append("comc")
    with pytest.raises(ConfigError, match="corpus 'nope' is not declared under `corpora:`"):
        build_graph(load_params(write_params(tmp_path, d)))


def test_all_task_is_the_full_label_set():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([-1, 1], dtype=np.int8), size=(50, 9), p=[0.7, 0.3])
    scores = rng.random((50, 9)).astype(np.float32)
    m = evaluate_scores(scores, labels, 6, EvalConfig(top_k=[3]))
    assert m["all"] == m["gzsl"] and m["meta"]["counts"]["all"]["classes"] == 9
    m = evaluate_scores(
        scores, labels, 6, EvalConfig(top_k=[3], all_labels="unseen")
    )  # NUS-WIDE's 81
    assert m["all"] == m["zsl"] and m["meta"]["counts"]["all"]["classes"] == 3


# ------------------------------------------------------------------- issue 21 (CoMC)
def test_eq12_fuses_probabilities_without_saturating():
    """fuse_probabilities is the logit of ½(σ(a) + σ(b)): the same order as Eq. 12's P, and
    still distinct where float32 σ saturates to 1."""
    from pipelines.methods.comc import fuse_probabilities

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g) * 4, torch.randn(200, generator=g) * 4
    p = 0.5 * (torch.sigmoid(a.double()) + torch.sigmoid(b.double()))
    out = fuse_probabilities(a.double(), b.double())
    assert torch.allclose(out, torch.log(p / (1 - p)), atol=1e-9)
    big = fuse_probabilities(torch.tensor([30.0, 30.0]), torch.tensor([31.0, 33.0]))
    assert big[1] > big[0]  # float32 σ gives 1.0 for both
    # not a monotone map of the logit average: the orders differ on some pairs
    la = 0.5 * (a + b)
    flips = ((la.unsqueeze(0) > la.unsqueeze(1)) & (out.unsqueeze(0) < out.unsqueeze(1))).sum()
    assert int(flips) > 0


def test_predict_fuses_probabilities_by_default_and_logits_on_request(tmp_path):
    ctx, labels = synthetic(tmp_path)
    m = CoMC(Config(epochs=2, lr=5e-3, batch_size=128, alpha=0.5))
    m.fit(ctx)
    feats, s = ctx.features("test"), m._label_text(ctx)
    with torch.no_grad():
        v = F.normalize(feats.global_.float(), dim=-1)
        glob = m.classifier(m._fuse(v, s))
        loc = F.normalize(feats.patches.float(), dim=-1)
        agg = m.classifier(m._fuse(loc, s)).amax(dim=1)
    p_final = 0.5 * (torch.sigmoid(glob.double()) + torch.sigmoid(agg.double()))  # Eq. 12
    scores = torch.from_numpy(m.predict(ctx)).double()
    for c in range(labels.shape[1]):  # per class, the images in Eq. 12's order
        assert torch.equal(
            torch.argsort(scores[:, c], stable=True), torch.argsort(p_final[:, c], stable=True)
        )
    m.config = Config(epochs=2, lr=5e-3, batch_size=128, alpha=0.5, fusion="logit")
    assert np.allclose(m.predict(ctx), (0.5 * (glob + agg)).numpy(), atol=1e-5)


def test_rank_scale_and_loss_on_set_what_eq3_ranks(tmp_path):
    ctx, _ = synthetic(tmp_path)
    x = F.normalize(torch.randn(6, DIM), dim=-1)
    for cfg, expect in (
        (Config(epochs=1), lambda z: z),
        (Config(epochs=1, rank_scale=2.0), lambda z: 2.0 * z),
        (Config(epochs=1, loss_on="probability"), torch.sigmoid),
    ):
        m = CoMC(cfg)
        m.fit(ctx)
        with torch.no_grad():
            assert torch.allclose(m._train_scores(x), expect(m.classifier(x)), atol=1e-6)
    assert (Config().rank_scale, Config().loss_on, Config().fusion) == (1.0, "logit", "probability")
