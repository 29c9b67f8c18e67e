"""Epsilon: GPA / GFP shapes, Eq. 9-13 by hand, word-vector label embeddings, variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.methods.epsilon import (
    Config,
    Epsilon,
    EpsilonModule,
    GlobalForwardPropagation,
    GroupPromptsAggregation,
    diversity_weight,
    epsilon_loss,
    max_over_groups,
    ranknet_loss,
    variance_regulariser,
    word_vector_embeddings,
)
from pipelines.methods.qks import classification_loss
from pipelines.train import Batch
from tests.test_train import SEEN, UNSEEN, fake_context

C = len(SEEN) + len(UNSEEN)
FAST = {"epochs": 1, "batch_size": 16, "lr": 1e-3}


def _cfg(**kw) -> Config:
    return Config(**{"n_groups": 3, "heads": 4, "dropout": 0.0, "train": FAST, **kw})


def test_paper_defaults():
    cfg = Config()
    t = cfg.train
    assert (cfg.n_groups, cfg.lambda_reg, cfg.gpa, cfg.gfp) == (8, 0.3, True, True)
    assert (
        t.epochs,
        t.batch_size,
        t.lr,
        t.optimizer,
        t.weight_decay,
        t.schedule,
        t.milestones,
        t.gamma,
    ) == (7, 96, 1e-5, "adam", 4e-3, "step", [4], 0.5)
    with pytest.raises(ValueError):
        Config(gpa=False, gfp=False)
    with pytest.raises(ValueError):
        Config(label_embeddings="word_vectors")


def test_module_shapes():
    f = torch.randn(2, 7, 16)
    assert GroupPromptsAggregation(16, 3, 1, 4, 0.0)(f).shape == (2, 3, 16)
    assert GlobalForwardPropagation(16, 3, 16)(f).shape == (2, 3, 16)


def test_gfp_block_by_hand():
    """Eq. 4-6 for one block: softmax of the MLP output over the tokens, then a weighted sum."""
    torch.manual_seed(0)
    gfp = GlobalForwardPropagation(4, 2, 5)
    f = torch.randn(1, 6, 4)
    out = gfp(f)
    fg = gfp.blocks(f).view(1, 6, 2, 4)[:, :, 1]  # block m = 1, (1, N, D)
    w = torch.nn.functional.gelu(fg @ gfp.w1[1] + gfp.b1[1]) @ gfp.w2[1] + gfp.b2[1]
    a = torch.softmax(w, dim=1)
    assert torch.allclose(out[:, 1], (fg * a).sum(dim=1), atol=1e-6)


def test_gpa_keeps_first_m_outputs_and_attends_to_features():
    torch.manual_seed(0)
    gpa = GroupPromptsAggregation(8, 2, 1, 2, 0.0).eval()
    f = torch.randn(1, 5, 8)
    gq = gpa.encoder(torch.cat([gpa.prompts.unsqueeze(0), f], dim=1))[:, :2]  # Eq. 1-2
    attn = torch.softmax(gq @ gpa.key(f).transpose(1, 2) / math.sqrt(8), dim=-1)  # Eq. 3
    assert torch.allclose(gpa(f), attn @ gpa.value(f), atol=1e-6)


def test_ranknet_loss_by_hand():
    s = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
    y = torch.tensor([[1, -1, -1, 0], [1, 1, 0, 0]], dtype=torch.int8)
    sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    img1 = (sp(0.0 - 1.0) + sp(2.0 - 1.0)) / (1 * 2)  # alpha = 1 / (|T| |T_bar|)
    assert ranknet_loss(s, y).tolist() == pytest.approx([img1, 0.0])  # image 2 has no negative


def test_diversity_weight_and_regulariser_by_hand():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1, 1, -1], [1, -1, -1]], dtype=torch.int8)
    # positives of image 1: (1,0), (0,1): per-dim population variance 0.25 + 0.25
    assert diversity_weight(y, labels).tolist() == pytest.approx([1.5, 1.0])
    sem = torch.tensor([[[1.0, 3.0], [4.0, 2.0]]])  # M = 2 vectors; across M: var 2.25 and 0.25
    assert variance_regulariser(sem).tolist() == pytest.approx([2.5])
    assert variance_regulariser(sem[:, :1]).tolist() == [
        0.0
    ]  # one vector: nothing to pull together


def test_epsilon_loss_eq13_by_hand():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sem = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # (B=1, M=2, d=2)
    y = torch.tensor([[1, 1, -1]], dtype=torch.int8)
    s = [max(2.0, 0.0), max(0.0, 1.0), max(2.0, 1.0)]  # label scores: max over M
    lr = (math.log(1 + math.exp(s[2] - s[0])) + math.log(1 + math.exp(s[2] - s[1]))) / 2
    w = 1.5
    reg = 1.0 + 0.25  # across M: var([2, 0]) (dim 0) + var([0, 1]) (dim 1)
    lam = 0.3
    total, parts = epsilon_loss(sem, labels, y, lam)
    assert max_over_groups(sem, labels).tolist() == [s]
    assert total.item() == pytest.approx(w * (1 - lam) * lr + lam * reg, rel=1e-6)
    assert parts["reg_loss"].item() == pytest.approx(reg)


@pytest.mark.parametrize("opts", [{}, {"gpa": False}, {"gfp": False}])
def test_fit_predict_and_summary(tmp_path, opts):
    ctx = fake_context(tmp_path)
    method = Epsilon(_cfg(**opts))
    summary = method.fit(ctx)
    scores = method.predict(ctx)
    assert scores.shape == (len(ctx.test_labels), C) and np.isfinite(scores).all()
    assert (
        summary["backbone"] == "ovml-tiny-vit" and summary["label_embeddings"]["source"] == "clip"
    )
    assert summary["modules"] == {"gpa": opts.get("gpa", True), "gfp": opts.get("gfp", True)}
    width = 128 * (int(opts.get("gpa", True)) + int(opts.get("gfp", True)))
    assert method.module.fuser.in_features == width


def test_ranknet_ignores_a_component_every_label_shares():
    """Why centring helps: adding the same vector to every label embedding shifts each
    image's scores by one offset, which Eq. 9-10 cannot see but cross-image mAP can."""
    torch.manual_seed(0)
    labels = F.normalize(torch.randn(6, 4), dim=-1)
    sem = torch.randn(3, 1, 4)  # M = 1, so the max over groups is the plain inner product
    y = torch.tensor([[1, -1, -1, 1, 0, -1], [-1, 1, -1, -1, -1, 1], [1, 1, -1, -1, 1, -1]])
    shared = torch.randn(1, 4)
    a = ranknet_loss(max_over_groups(sem, labels), y)
    b = ranknet_loss(max_over_groups(sem, labels + shared), y)
    assert torch.allclose(a, b, atol=1e-5)
    offsets = max_over_groups(sem, labels + shared) - max_over_groups(sem, labels)
    assert offsets.std(dim=0).max() > 0.1  # a per-image offset, different across images


def test_center_labels_and_classification_objective(tmp_path):
    ctx = fake_context(tmp_path)
    method = Epsilon(_cfg(center_labels=True, objective="classification"))
    summary = method.fit(ctx)
    emb = method.module.label_emb
    assert summary["label_embeddings"]["centered_on_seen_mean"] is True
    assert emb[: ctx.n_seen].mean(dim=0).norm() < 0.2 * emb[: ctx.n_seen].norm(dim=1).mean()
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    out = method.module(Batch(torch.arange(4), *_feats(ctx, 4)))
    y = torch.tensor(ctx.train_labels[:4, : ctx.n_seen])
    expected = classification_loss(method.module.scores(out), y)
    assert torch.allclose(method.module.loss(out, y), expected)


def test_class_token_joins_the_image_tokens(tmp_path):
    """tokens: all feeds [class token; patches] (the ViT's whole output), "patches" P tokens."""
    ctx = fake_context(tmp_path)
    seen = []
    for tokens in ("all", "patches"):
        module = EpsilonModule(_cfg(tokens=tokens, gpa=False), ctx, ctx.label_embeddings("pool"))
        module.gfp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
        module(Batch(torch.arange(2), *_feats(ctx, 2)))
    n_patches = ctx.features("train").patches.shape[1]
    assert seen == [n_patches + 1, n_patches]


def _feats(ctx, n):
    f = ctx.features("train")
    return f.global_[:n].float(), f.patches[:n].float()


def test_frozen_tower_gets_no_gradient_in_images_mode(tmp_path):
    ctx = fake_context(tmp_path)
    module = EpsilonModule(
        _cfg(train={**FAST, "input_mode": "images"}), ctx, ctx.label_embeddings("pool")
    )
    idx = torch.arange(4)
    batch = Batch(
        index=idx,
        pixels=ctx.backbone.uint8_to_tensor(ctx.open_images("train").get(idx.numpy(), 64)),
    )
    loss, _ = module.loss(module(batch), torch.from_numpy(ctx.train_labels[:4, : ctx.n_seen]))
    loss.backward()
    assert all(p.grad is None for p in module.tower.parameters())
    assert module.fuser.weight.grad is not None and module.gpa.prompts.grad is not None


def _glove(path, rows):
    path.write_text("".join(f"{w} {' '.join(str(x) for x in v)}\n" for w, v in rows))
    return path


def test_word_vectors_average_multiword_labels_and_handle_oov(tmp_path):
    f = _glove(
        tmp_path / "glove.txt",
        [("red", [1, 0, 0]), ("fish", [0, 2, 0]), ("Sky", [0, 0, 5]), ("the", [9, 9, 9])],
    )
    emb, info = word_vector_embeddings(["red fish", "sky", "red"], f)
    expected = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(emb, expected) and info["dim"] == 3 and info["n_oov_words"] == 0
    with pytest.raises(ValueError, match="no vector"):
        word_vector_embeddings(["red star", "sky"], f)
    emb, info = word_vector_embeddings(["red star", "sky"], f, oov="skip")
    assert torch.allclose(emb[0], torch.tensor([1.0, 0.0, 0.0])) and info["oov_words"] == ["star"]
    with pytest.raises(ValueError, match="no word with a vector"):
        word_vector_embeddings(["star", "sky"], f, oov="skip")
    emb, info = word_vector_embeddings(["star", "sky"], f, oov="zero")
    assert emb[0].abs().sum() == 0 and info["labels_without_vector"] == ["star"]


def test_word2vec_header_and_fit_with_word_vectors(tmp_path):
    rng = np.random.default_rng(0)
    words = sorted({w for n in (*SEEN, *UNSEEN) for w in n.split()})
    f = tmp_path / "vectors.txt"
    f.write_text(
        f"{len(words)} 6\n"
        + "".join(f"{w} {' '.join(f'{x:.4f}' for x in rng.standard_normal(6))}\n" for w in words)
    )
    ctx = fake_context(tmp_path / "w")
    method = Epsilon(_cfg(label_embeddings="word_vectors", word_vectors=str(f)))
    summary = method.fit(ctx)
    assert summary["label_embeddings"]["dim"] == 6 and method.module.fuser.out_features == 6
    assert method.predict(ctx).shape == (len(ctx.test_labels), C)


def test_fuser_and_scores_stay_float32_under_bf16_autocast(tmp_path):
    """The Semantic Fuser (Eq. 8) and the max over groups run in fp32 under autocast, so
    test scores keep full precision (bf16 has ~3 significant digits: ties over 100k images)."""
    ctx = fake_context(tmp_path)
    module = EpsilonModule(_cfg(), ctx, ctx.label_embeddings("pool")).eval()
    f = ctx.features("train")
    idx = torch.arange(5)
    batch = Batch(index=idx, global_=f.global_[idx].float(), patches=f.patches[idx].float())
    with torch.no_grad():
        ref = module.scores(module(batch, seen_only=False))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(batch, seen_only=False)
            got = module.scores(out)
    assert out["semantics"].dtype == torch.float32 and got.dtype == torch.float32
    # the attention blocks before the fuser still run in bf16: close, not equal
    assert torch.allclose(got, ref, rtol=0.05, atol=0.05)
    s = torch.randn(3, 4, 32)
    e = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = max_over_groups(s, e)
    assert fused.dtype == torch.float32 and torch.equal(fused, max_over_groups(s, e))
