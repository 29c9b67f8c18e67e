"""C2SRT: ISR's prefix (Algorithm 1) against a direct loop, the relation graphs' in-degree,
distillation pulling the student's global feature to the cached teacher's, IST through
torch_geometric's GATv2Conv, and an end-to-end (images-mode) run that resumes exactly
after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train import SEEN, UNSEEN, fake_context

from pipelines.methods import c2srt
from pipelines.train import Batch, TrainConfig, Trainer, latest_checkpoint, trainable_state

TOY_TRAIN = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 16, "threads": 1}


def _cfg(**kw) -> c2srt.Config:
    train = TrainConfig(**{**TOY_TRAIN, **kw.pop("train", {})})
    base = {"n_related": 3, "heads": 2, "max_patches": 8, "relations": "similarity", "train": train}
    return c2srt.Config(**{**base, **kw})


def _corpus(n_labels: int, n_seen: int, seed: int = 0) -> pl.DataFrame:
    """A category-relations table: a few listed seen labels per label, scores in {1, 2, 3}."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_labels):
        for j in rng.choice(n_seen, size=2, replace=False):
            if i != j:
                rows.append(
                    {"label_id": i, "related_id": int(j), "score": float(rng.integers(1, 4))}
                )
    return pl.DataFrame(
        rows, schema={"label_id": pl.Int32, "related_id": pl.Int32, "score": pl.Float64}
    )


def test_paper_defaults():
    cfg = c2srt.Config()
    assert (cfg.alpha, cfg.max_patches, cfg.n_related, cfg.gat_layers) == (0.5, 32, 16, 2)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size) == (1e-3, 5e-3, 64)
    assert (cfg.train.optimizer, cfg.train.epochs, cfg.relations, cfg.prompts) == (
        "adamw",
        20,
        "llm",
        "pool",
    )
    assert cfg.distill and cfg.isr and cfg.ist and cfg.isr_temperature == 100.0
    with pytest.raises(ValueError, match="distill needs finetune"):
        c2srt.Config(finetune=False)


# ----------------------------------------------------------------------------- ISR
def _isr_loop(patches, text, alpha, n_max, temperature):
    """Algorithm 1 written as printed: one image, one class, a Python for loop."""
    b, p, _ = patches.shape
    mask = torch.zeros(b, text.shape[0], p)
    counts = torch.zeros(b, text.shape[0], dtype=torch.long)
    for bi in range(b):
        for c in range(text.shape[0]):
            s = torch.stack(
                [F.cosine_similarity(patches[bi, i], text[c], dim=0) for i in range(p)]
            )  # lines 1-2
            s = torch.softmax(temperature * s, dim=0)  # line 3
            k = torch.argsort(s, descending=True, stable=True)  # line 4
            total = 0.0
            for i in range(1, p + 1):  # lines 5-10
                total += float(s[k[i - 1]])
                if total >= alpha or i >= n_max:
                    break
            mask[bi, c, k[:i]] = 1.0
            counts[bi, c] = i
    return mask, counts


@pytest.mark.parametrize(
    "alpha,n_max,temperature", [(0.5, 32, 100.0), (0.5, 5, 100.0), (0.9, 64, 10.0), (0.2, 3, 1.0)]
)
def test_isr_selects_the_prefix_of_algorithm_1(alpha, n_max, temperature):
    g = torch.Generator().manual_seed(int(alpha * 100) + n_max)
    patches = torch.randn(3, 40, 16, generator=g)
    text = torch.randn(5, 16, generator=g)
    mask, counts = c2srt.isr_select(patches, text, alpha, n_max, temperature)
    ref_mask, ref_counts = _isr_loop(patches, text, alpha, n_max, temperature)
    # the cumulative sum sits near alpha only by chance; float order of summation agrees here
    assert torch.equal(counts, ref_counts)
    assert torch.equal(mask, ref_mask)
    assert (counts <= n_max).all() and (counts >= 1).all()
    pooled = c2srt.isr_pool(patches, mask, counts)
    bi, c = 1, 2
    sel = ref_mask[bi, c].bool()
    expect = F.normalize(patches[bi, sel], dim=-1).mean(dim=0)
    assert torch.allclose(pooled[bi, c], expect, atol=1e-6)


def test_isr_temperature_moves_the_prefix_length():
    """With raw cosines (scale 1) the softmax over 64 patches is near uniform: the cap binds;
    at CLIP's scale the mass concentrates and alpha decides."""
    g = torch.Generator().manual_seed(0)
    patches, text = torch.randn(4, 64, 32, generator=g), torch.randn(6, 32, generator=g)
    _, n1 = c2srt.isr_select(patches, text, 0.5, 16, 1.0)
    _, n100 = c2srt.isr_select(patches, text, 0.5, 16, 100.0)
    assert (n1 == 16).all()
    assert n100.float().mean() < 4


# --------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("source", ["llm", "random", "similarity", "cooccurrence"])
def test_graph_has_the_configured_in_degree(source, tmp_path):
    ctx = fake_context(tmp_path)
    s, c = len(SEEN), len(SEEN) + len(UNSEEN)
    g = c2srt.build_relation_graph(
        source,
        n_related=3,
        n_seen=s,
        n_labels=c,
        text=ctx.label_embeddings("pool"),
        seed=0,
        train_labels=ctx.train_labels,
        corpus=_corpus(c, s),
    )
    src, tgt = g["edges"][:, 0], g["edges"][:, 1]
    assert (np.bincount(tgt, minlength=c) == 3).all()  # every label receives from n
    assert (src < s).all() and (src != tgt).all()  # from seen labels, never itself
    assert len({(a, b) for a, b in g["edges"]}) == len(g["edges"])  # no duplicate edges
    summary = c2srt.graph_summary(g, ctx.label_space.names(), s)
    assert summary["in_degree_histogram"] == {"3": c}
    assert len(summary["neighbourhoods"]) == 6


def test_llm_graph_keeps_the_highest_mean_scores(tmp_path):
    ctx = fake_context(tmp_path)
    s, c = len(SEEN), len(SEEN) + len(UNSEEN)
    df = pl.DataFrame(
        {"label_id": [9, 9, 9, 0], "related_id": [5, 2, 7, 3], "score": [3.0, 1.0, 2.5, 2.0]},
        schema={"label_id": pl.Int32, "related_id": pl.Int32, "score": pl.Float64},
    )
    g = c2srt.build_relation_graph(
        "llm", n_related=2, n_seen=s, n_labels=c, text=ctx.label_embeddings(), seed=0, corpus=df
    )
    assert list(g["neighbours"][9]) == [5, 7]
    assert g["neighbours"][0][0] == 3
    bad = pl.DataFrame({"label_id": [0], "related_id": [s], "score": [1.0]})
    with pytest.raises(ValueError, match="outside the label space"):
        c2srt.llm_scores(bad, c, s)


def test_cooccurrence_graph_follows_train_statistics():
    y = -np.ones((6, 6), np.int8)
    y[:, 0] = 1  # label 0 in every image
    y[:3, 1] = 1
    y[:3, 2] = 1  # 1 and 2 always together
    y[3:, 3] = 1
    sim = np.zeros((7, 6), np.float32)
    scores = c2srt.cooccurrence_scores(y, 6, 7, sim)
    nb = c2srt.top_related(scores, 6, 2)
    assert set(nb[1]) == {0, 2}
    assert scores[1, 2] == 1.0 and scores[3, 1] == 0.0


# ------------------------------------------------------------------------- modules
def test_ist_uses_gatv2conv_and_only_listed_neighbours(tmp_path):
    from torch_geometric.nn import GATv2Conv

    torch.manual_seed(0)
    ist = c2srt.IST(16, 16, 2, 2, self_loops=True, dropout=0.0).eval()
    assert any(isinstance(m, GATv2Conv) for m in ist.modules())
    edges = torch.tensor([[0, 1], [1, 2]])  # 0 -> 1, 1 -> 2; node 3 receives from nobody
    f_img, f_txt = torch.randn(2, 4, 16), torch.randn(4, 16)
    out = ist(f_img, f_txt, edges)
    f_img2 = f_img.clone()
    f_img2[:, 3] += 1.0  # node 3 sends nowhere: nodes 0-2 must not change
    f_img2[1, 0] += 1.0  # image 1's node 0 reaches 1 and (2 hops) 2, never image 0
    out2 = ist(f_img2, f_txt, edges)
    assert torch.allclose(out[:, :3][0], out2[:, :3][0], atol=1e-6)
    assert not torch.allclose(out[1, 1], out2[1, 1]) and not torch.allclose(out[1, 2], out2[1, 2])
    assert not torch.allclose(out[:, 3], out2[:, 3])


def test_ist_vlp_init_starts_at_the_vlp_matching():
    """ist_init 'vlp': before training, with one image feature for every label (no ISR),
    IST returns ELU(f_G) for every label whatever its text or neighbours, so the scores rank
    labels as cos(ELU(f_G), f_txt); 'random' does not."""
    torch.manual_seed(0)
    d, c = 16, 5
    edges = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 4, 0]])
    f_g = F.normalize(torch.randn(3, d), dim=-1)
    f_img, f_txt = f_g.unsqueeze(1).expand(-1, c, -1), F.normalize(torch.randn(c, d), dim=-1)
    out = c2srt.IST(d, d, 2, 2, self_loops=True, dropout=0.0, init="vlp").eval()(
        f_img, f_txt, edges
    )
    assert torch.allclose(out, F.elu(f_g).unsqueeze(1).expand(-1, c, -1), atol=1e-6)
    rnd = c2srt.IST(d, d, 2, 2, self_loops=True, dropout=0.0, init="random").eval()
    assert not torch.allclose(rnd(f_img, f_txt, edges), out, atol=1e-3)
    with pytest.raises(ValueError, match="hidden: null"):
        c2srt.Config(hidden=64).check_backbone(128)
    c2srt.Config(hidden=64, ist_init="random").check_backbone(128)
    c2srt.Config(hidden=64, ist=False).check_backbone(128)


def test_distillation_drives_f_g_to_the_teacher(tmp_path):
    """A perturbed student tower trained with distillation moves back towards the cached
    teacher features; without distillation (lambda = 0) it does not get as close."""

    def gap_after(lam: float, work: Path) -> tuple[float, float]:
        ctx = fake_context(work, n_train=40)
        cfg = _cfg(
            isr=False,
            ist=False,
            lambda_dist=lam,
            train={"epochs": 6, "batch_size": 8, "lr": 3e-3},
        )
        torch.manual_seed(0)
        module = c2srt.C2SRTModule(cfg, ctx, None)
        with torch.no_grad():
            for p in module.tower.parameters():
                p.add_(0.05 * torch.randn_like(p))
        teacher = ctx.features("train").global_.float()
        pix = ctx.backbone.uint8_to_tensor(ctx.open_images("train").get(np.arange(40), 64))

        def gap() -> float:
            with torch.no_grad():
                g, _ = module.tower(pix)
            return float((g - teacher).abs().sum(-1).mean())

        before = gap()
        res = Trainer(cfg.train, ctx).fit(module)
        assert "dist" in res.history[-1]
        return before, gap()

    before, with_dist = gap_after(30.0, tmp_path / "d")
    _, without = gap_after(0.0, tmp_path / "n")
    assert with_dist < 0.5 * before
    assert with_dist < 0.5 * without


def test_fit_predict_with_llm_graph(tmp_path):
    """Without a graph stage (no ``load_relations``) the method builds the graph in memory;
    the cell folder never holds a graph of its own (tests/test_relations.py: the stage)."""
    ctx = fake_context(tmp_path)
    s, c = len(SEEN), len(SEEN) + len(UNSEEN)
    ctx.load_corpus = lambda kind: _corpus(c, s)
    method = c2srt.C2SRT(_cfg(relations="llm", train={"epochs": 1}))
    assert method.corpora() == {}  # the corpus is the graph stage's input, not the cell's
    summary = method.fit(ctx)
    scores = method.predict(ctx)
    assert scores.shape == (len(ctx.test_labels), c) and np.isfinite(scores).all()
    assert np.abs(scores).max() <= 1.0 + 1e-5  # cosine scores (Eq. 10)
    assert summary["modules"] == {"dist": True, "isr": True, "ist": True}
    assert summary["relation_graph"]["in_degree_histogram"] == {"3": c}
    assert summary["relation_graph"]["n_edges"] == 3 * c
    assert not list(tmp_path.rglob("relation-graph.*"))
    state = method.state_dict()
    assert any(k.startswith("tower.") for k in state) and any(k.startswith("ist.") for k in state)


@pytest.mark.parametrize(
    "opts", [{"prompts": "tuning"}, {"alpha": 0.0}, {"finetune": False, "distill": False}]
)
def test_variants_train(tmp_path, opts):
    ctx = fake_context(tmp_path)
    method = c2srt.C2SRT(_cfg(train={"epochs": 1}, **opts))
    method.fit(ctx)
    assert np.isfinite(method.predict(ctx)).all()
    if opts.get("finetune") is False:
        assert method.module.input_mode == "features"
        assert not any(k.startswith("tower.") for k in method.state_dict())


def test_seen_only_training_graph_is_closed(tmp_path):
    """Training scores only seen labels: the seen sub-graph loses no edge (every source is
    seen), so seen scores equal the seen columns of the full forward pass."""
    ctx = fake_context(tmp_path)
    cfg = _cfg(train={"epochs": 1})
    method = c2srt.C2SRT(cfg)
    graph = method.relation_graph(ctx)
    module = c2srt.C2SRTModule(cfg, ctx, graph).eval()
    f = ctx.features("test")
    idx = torch.arange(4)
    batch = Batch(
        index=idx, pixels=ctx.backbone.uint8_to_tensor(ctx.open_images("test").get(idx.numpy(), 64))
    )
    with torch.no_grad():
        seen = module.scores(module(batch, seen_only=True))
        full = module.scores(module(batch, seen_only=False))
    assert torch.allclose(seen, full[:, : len(SEEN)], atol=1e-5)
    assert f.global_.shape[0] >= 4


# ------------------------------------------------------------------ kill and resume
def _child(work: str, kill_epoch: str, kill_step: str, out: str) -> None:
    torch.set_num_threads(1)
    kill_at = (int(kill_epoch), int(kill_step))

    def on_step(epoch: int, step: int) -> None:
        if (epoch, step) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ctx = fake_context(Path(work))
    cfg = _cfg(dropout=0.2, train={"epochs": 3, "batch_size": 8})
    method = c2srt.C2SRT(cfg)
    graph = method.relation_graph(ctx)
    torch.manual_seed(0)
    module = c2srt.C2SRTModule(cfg, ctx, graph)
    res = Trainer(cfg.train, ctx, on_step=on_step).fit(module)
    from safetensors.torch import save_file

    save_file(trainable_state(module), out + ".safetensors")
    Path(out + ".json").write_text(
        json.dumps({"resumed_from": res.resumed_from, "history": res.history})
    )


def _run(*args) -> int:
    import multiprocessing as mp

    proc = mp.get_context("fork").Process(target=_child, args=tuple(map(str, args)))
    proc.start()
    proc.join(timeout=600)
    return proc.exitcode


def test_end_to_end_run_resumes_exactly_after_sigkill(tmp_path):
    fake_context(tmp_path)  # shared fixtures before forking
    assert _run(tmp_path / "ref", -1, -1, tmp_path / "ref") == 0
    assert _run(tmp_path / "run", 2, 2, tmp_path / "killed") == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0001"
    assert _run(tmp_path / "run", -1, -1, tmp_path / "resumed") == 0
    ref = json.loads((tmp_path / "ref.json").read_text())
    res = json.loads((tmp_path / "resumed.json").read_text())
    assert res["resumed_from"] == 1 and len(res["history"]) == 3
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]  # noqa: E731
    assert strip(res["history"]) == strip(ref["history"])
    a = load_file(str(tmp_path / "ref.safetensors"))
    b = load_file(str(tmp_path / "resumed.safetensors"))
    assert any(k.startswith("tower.") for k in a)  # the image encoder trained end to end
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- issue 21 (C2SRT)
def test_loss_is_eq11_and_eq12_as_printed_sums_over_images_and_pairs(tmp_path):
    """Default ``loss_reduction: sum``: L_cls = sum_k sum_{p, n} max(0, 1 - y_p + y_n) (Eq. 11
    with the sign its sentence states) and L_dist = sum_k ||f_G - f_G^CLIP||_1 (Eq. 2),
    L = L_cls + lambda L_dist (Eq. 12); ``mean`` keeps the earlier per-pair means."""
    ctx = fake_context(tmp_path)
    s = len(SEEN)
    g = torch.Generator().manual_seed(3)
    targets = torch.tensor(
        np.random.default_rng(3).choice([-1, 0, 1], size=(5, s)), dtype=torch.int8
    )
    f_g = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    teacher = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(s, 16, generator=g), dim=-1)
    h = torch.randn(5, s, 16, generator=g)  # IST outputs; scores = cos(h, text) (Eq. 10)
    ref_rank, ref_rank_mean = 0.0, 0.0
    cos = F.cosine_similarity(h, text.unsqueeze(0), dim=-1)
    for k in range(5):
        pairs = [
            max(0.0, 1.0 - float(cos[k, p]) + float(cos[k, n]))
            for p in range(s)
            for n in range(s)
            if targets[k, p] > 0 and targets[k, n] < 0
        ]
        ref_rank += sum(pairs)
        ref_rank_mean += sum(pairs) / max(1, len(pairs)) / 5
    l1 = (f_g - teacher).abs().sum(dim=-1)
    out = {"h": h, "text": text, "f_g": f_g, "teacher": teacher}
    for reduction, rank, dist in (
        ("sum", ref_rank, float(l1.sum())),
        ("mean", ref_rank_mean, float(l1.mean())),
    ):
        cfg = _cfg(isr=False, ist=False, lambda_dist=0.5, loss_reduction=reduction)
        module = c2srt.C2SRTModule(cfg, ctx, None)
        total, parts = module.loss(out, targets)
        assert float(parts["rank"]) == pytest.approx(rank, rel=1e-5)
        assert float(parts["dist"]) == pytest.approx(dist, rel=1e-5)
        assert float(total) == pytest.approx(rank + 0.5 * dist, rel=1e-5)
    assert c2srt.Config().loss_reduction == "sum"


def test_isr_runs_in_float32_under_autocast():
    """Training runs under bf16 autocast on CUDA, prediction in float32: ISR must pick the
    same patches in both (CPU autocast rounds the einsum to bf16 the same way)."""
    g = torch.Generator().manual_seed(1)
    patches, text = torch.randn(6, 196, 64, generator=g), torch.randn(20, 64, generator=g)
    ref_mask, ref_n = c2srt.isr_select(patches, text, 0.5, 32, 100.0)
    ref_pool = c2srt.isr_pool(patches, ref_mask, ref_n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask, n = c2srt.isr_select(patches, text, 0.5, 32, 100.0)
        pool = c2srt.isr_pool(patches, mask, n)
    assert torch.equal(n, ref_n) and torch.equal(mask, ref_mask)
    assert pool.dtype == torch.float32 and torch.equal(pool, ref_pool)


def test_alpha_1_keeps_every_patch_up_to_the_cap():
    """Figure 5's alpha = 1 ("all local features"): every patch, capped at N; a peaked
    softmax whose float cumulative sum reaches 1.0 early must not stop the prefix."""
    assert c2srt.Config(alpha=1.0).uses_local
    with pytest.raises(ValueError):
        c2srt.Config(alpha=1.01)
    g = torch.Generator().manual_seed(2)
    patches, text = torch.randn(3, 40, 16, generator=g), torch.randn(4, 16, generator=g)
    _, n = c2srt.isr_select(patches, text, 1.0, 32, 1000.0)
    assert (n == 32).all()
    mask, n = c2srt.isr_select(patches, text, 1.0, 64, 1000.0)
    assert (n == 40).all() and bool((mask == 1).all())


def test_table3_row1_frozen_reading_trains_nothing_and_is_the_vlp_matching(tmp_path):
    ctx = fake_context(tmp_path)
    cfg = _cfg(finetune=False, distill=False, isr=False, ist=False)
    assert not cfg.trains
    method = c2srt.C2SRT(cfg)
    summary = method.fit(ctx)
    scores = method.predict(ctx)
    assert summary["epochs"] == 0 and summary["trainable_params"] == 0
    assert method.state_dict() == {}
    g = F.normalize(ctx.features("test").global_.float(), dim=-1)
    ref = F.cosine_similarity(
        g.unsqueeze(1), ctx.label_embeddings("pool").float().unsqueeze(0), dim=-1
    )
    assert np.allclose(scores, ref.numpy(), atol=1e-5)
    assert not any(Path(ctx.workdir).rglob("epoch-*"))  # no checkpoint: nothing was trained


class _RowsOnly:
    """A feature store that serves rows of ``global_`` and refuses ``patches`` (what a
    streamed cache must be able to do for the teacher)."""

    def __init__(self, feats):
        self._g, self.reads = feats.global_, []

    @property
    def global_(self):
        return self

    def __getitem__(self, idx):
        self.reads.append(len(idx))
        return self._g[idx]

    @property
    def patches(self):
        raise AssertionError("the teacher read the patch tokens")


def test_teacher_reads_batch_rows_of_the_cache_or_runs_online(tmp_path):
    ctx = fake_context(tmp_path)
    feats = ctx.features("train")
    spy = _RowsOnly(feats)
    ctx.load_features = lambda split: spy if split == "train" else feats
    ctx._cache.clear()
    idx = torch.tensor([3, 0, 7, 5])
    pix = ctx.backbone.uint8_to_tensor(ctx.open_images("train").get(idx.numpy(), 64))
    batch = Batch(index=idx, pixels=pix)
    cached = c2srt.C2SRTModule(_cfg(isr=False, ist=False), ctx, None).teacher(batch)
    assert spy.reads == [4]  # one read of the batch's rows, never the whole array
    online_module = c2srt.C2SRTModule(_cfg(isr=False, ist=False, teacher="online"), ctx, None)
    online = online_module.teacher(batch)
    assert spy.reads == [4]  # the online teacher never touches the cache
    assert torch.allclose(online, cached, atol=2e-3)  # the cache is fp16
    assert not any(k.startswith("_online") for k in online_module.state_dict())
    with pytest.raises(ValueError, match="distill is off"):
        _cfg(distill=False, teacher="online")


def test_llm_graph_reports_its_padded_edges(tmp_path):
    """Label 9 has two LLM-listed seen labels and n = 3: one edge is padded by text
    similarity; a label with no listed label has all n padded; similarity pads nothing."""
    ctx = fake_context(tmp_path)
    s, c = len(SEEN), len(SEEN) + len(UNSEEN)
    df = pl.DataFrame(
        {
            "label_id": [9, 9] + [i for i in range(c) if i != 9 for _ in range(3)],
            "related_id": [5, 2]
            + [j for i in range(c) if i != 9 for j in [x for x in range(s) if x != i][:3]],
            "score": [3.0, 1.0] + [2.0] * (3 * (c - 1)),
        },
        schema={"label_id": pl.Int32, "related_id": pl.Int32, "score": pl.Float64},
    )
    df = df.filter(pl.col("label_id") != 10)  # label 10: nothing listed
    g = c2srt.build_relation_graph(
        "llm", n_related=3, n_seen=s, n_labels=c, text=ctx.label_embeddings(), corpus=df
    )
    summary = c2srt.graph_summary(g, ctx.label_space.names(), s)
    assert summary["padded_edges"] == 1 + 3 and summary["labels_padded"] == 2
    assert summary["labels_all_padded"] == 1 and summary["padded_edges_into_unseen"] == 4
    assert summary["padded_by"] == "text similarity"
    assert int(g["padded"][g["edges"][:, 1] == 9].sum()) == 1
    sim = c2srt.build_relation_graph(
        "similarity", n_related=3, n_seen=s, n_labels=c, text=ctx.label_embeddings()
    )
    assert c2srt.graph_summary(sim, ctx.label_space.names(), s)["padded_edges"] == 0
