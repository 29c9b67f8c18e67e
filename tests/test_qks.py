"""QKS: shapes, Eq. 6 scoring, Eq. 7 / ranking losses by hand, frozen parts, variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.methods.qks import (
    QKS,
    Config,
    LabelEncoder,
    QKSModule,
    TextTower,
    classification_loss,
    max_over_queries,
    ranking_loss,
)
from pipelines.train import Batch, trainable_state
from tests.test_train import SEEN, UNSEEN, fake_context

C = len(SEEN) + len(UNSEEN)
FAST = {"epochs": 1, "batch_size": 16, "lr": 1e-3}


def _cfg(**kw) -> Config:
    return Config(
        **{"n_queries": 3, "n_layers": 2, "heads": 4, "dropout": 0.0, "train": FAST, **kw}
    )


def _batch(ctx, n: int = 5, images: bool = False) -> Batch:
    idx = torch.arange(n)
    if images:
        pixels = ctx.backbone.uint8_to_tensor(ctx.open_images("train").get(idx.numpy(), 64))
        return Batch(index=idx, pixels=pixels)
    f = ctx.features("train")
    return Batch(index=idx, global_=f.global_[idx].float(), patches=f.patches[idx].float())


def test_paper_defaults():
    cfg = Config()
    assert (cfg.n_queries, cfg.n_layers, cfg.prompts, cfg.objective) == (
        12,
        7,
        "pool",
        "classification",
    )
    assert (
        cfg.train.batch_size,
        cfg.train.lr,
        cfg.train.optimizer,
        cfg.train.schedule,
        cfg.train.gamma,
        cfg.train.weight_decay,  # not in the paper: AdamW's default (0 would be plain Adam)
    ) == (64, 1e-5, "adamw", "plateau", 0.1, 0.01)
    with pytest.raises(ValueError):
        Config(unfreeze_vision=True, train={"input_mode": "features"})


def test_shapes_and_scores_are_max_over_queries(tmp_path):
    ctx = fake_context(tmp_path)
    module = QKSModule(_cfg(), ctx).eval()
    with torch.no_grad():
        out = module(_batch(ctx), seen_only=False)
    assert out["queries"].shape == (5, 3, 128) and out["labels"].shape == (C, 128)
    scores = module.scores(out)
    assert scores.shape == (5, C)
    q, t = out["queries"], out["labels"]
    brute = torch.tensor(
        [[max(float(q[b, j] @ t[i]) for j in range(3)) for i in range(C)] for b in range(5)]
    )
    assert torch.allclose(scores, brute, atol=1e-5)  # Eq. 6: unnormalised inner products
    assert module(_batch(ctx), seen_only=True)["labels"].shape == (len(SEEN), 128)


def test_max_over_queries_by_hand():
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one image, m = 2 queries
    t = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    assert max_over_queries(q, t).tolist() == [[2.0, 3.0]]


def test_classification_loss_by_hand():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([[1, -1, 0], [-1, 1, 1]], dtype=torch.int8)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    img1 = -math.log(sig(2.0)) - math.log(1 - sig(-1.0))  # 0.5 is unknown
    img2 = -math.log(1 - sig(0.0)) - math.log(sig(3.0)) - math.log(sig(-2.0))
    assert classification_loss(s, y).item() == pytest.approx((img1 + img2) / 2, rel=1e-6)


def test_ranking_loss_by_hand():
    s = torch.tensor([[0.9, 0.2, -0.5, 0.4], [0.1, 0.0, 0.3, 0.0]])
    y = torch.tensor([[1, -1, -1, 0], [0, 0, 0, 0]], dtype=torch.int8)
    img1 = (max(0, 1 - 0.9 + 0.2) + max(0, 1 - 0.9 - 0.5)) / 2
    assert ranking_loss(s, y).item() == pytest.approx(img1 / 2, rel=1e-6)  # image 2: no pair -> 0


def test_frozen_vlp_gets_no_gradient_and_is_not_checkpointed(tmp_path):
    ctx = fake_context(tmp_path)
    module = QKSModule(_cfg(train={**FAST, "input_mode": "images"}), ctx).train()
    assert module.input_mode == "images" and module.tower is not None
    batch = _batch(ctx, images=True)
    y = torch.from_numpy(ctx.train_labels[:5, : ctx.n_seen])
    module.loss(module(batch), y).backward()
    assert all(p.grad is None for p in module.tower.parameters())
    assert (
        module.extractor.queries.grad is not None and module.extractor.proj.weight.grad is not None
    )
    assert not any(k.startswith("tower") for k in trainable_state(module))


def test_unfrozen_encoders_get_gradients(tmp_path):
    ctx = fake_context(tmp_path)
    module = QKSModule(
        _cfg(unfreeze_vision=True, unfreeze_text=True, encoder_lr_scale=0.1), ctx
    ).train()
    assert module.input_mode == "images"
    y = torch.from_numpy(ctx.train_labels[:5, : ctx.n_seen])
    module.loss(module(_batch(ctx, images=True)), y).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.tower.parameters())
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in module.labels.tower.transformer.parameters()
    )
    groups = module.param_groups(1e-3)
    assert groups[1]["lr"] == pytest.approx(1e-4) and len(groups[1]["params"]) > 0
    assert (
        ctx.backbone.model.visual.conv1.weight.grad is None
    )  # the shared backbone is never touched


def test_prompt_tuning_learns_context_through_a_frozen_text_tower(tmp_path):
    ctx = fake_context(tmp_path)
    module = QKSModule(_cfg(prompts="tuning", n_ctx=4), ctx).train()
    y = torch.from_numpy(ctx.train_labels[:5, : ctx.n_seen])
    module.loss(module(_batch(ctx)), y).backward()
    assert (
        module.labels.ctx_vectors.grad is not None
        and module.labels.ctx_vectors.grad.abs().sum() > 0
    )
    assert all(p.grad is None for p in module.labels.tower.parameters())
    assert set(k for k in trainable_state(module) if k.startswith("labels")) == {
        "labels.ctx_vectors"
    }


def test_text_tower_matches_open_clip_and_pool_embeddings(tmp_path):
    ctx = fake_context(tmp_path)
    bb = ctx.backbone
    tokens = bb.tokenize(["a photo of a red fish.", "sky"])
    tower = TextTower(bb.model, trainable=False)
    with torch.no_grad():
        assert torch.allclose(tower(tokens), bb.model.encode_text(tokens), atol=1e-5)
        enc = LabelEncoder(_cfg(unfreeze_text=True), ctx).eval()
        assert torch.allclose(enc(seen_only=False), ctx.label_embeddings("pool").float(), atol=1e-5)


@pytest.mark.parametrize("opts", [{}, {"objective": "ranking", "prompts": "single"}])
def test_fit_predict_summary(tmp_path, opts):
    ctx = fake_context(tmp_path)
    method = QKS(_cfg(**opts))
    summary = method.fit(ctx)
    scores = method.predict(ctx)
    assert scores.shape == (len(ctx.test_labels), C) and np.isfinite(scores).all()
    assert (
        summary["epochs"] == 1
        and summary["input_mode"] == "features"
        and summary["backbone"] == "ovml-tiny-vit"
    )
    assert "extractor.queries" in method.state_dict()


def test_scores_stay_float32_under_bf16_autocast(tmp_path):
    """bf16 keeps ~3 significant digits: scores stored that way tie over 100k test images.
    CPU autocast lowers einsum to bf16 just as CUDA's does, so the fix shows here."""
    ctx = fake_context(tmp_path)
    module = QKSModule(_cfg(), ctx).eval()
    with torch.no_grad():
        ref = module.scores(module(_batch(ctx), seen_only=False))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module.scores(module(_batch(ctx), seen_only=False))
            raw = torch.einsum("bmd,cd->bmc", torch.randn(2, 3, 8), torch.randn(4, 8))
    assert raw.dtype == torch.bfloat16  # what the unfixed einsum returned
    assert got.dtype == torch.float32
    q = torch.randn(4, 3, 64) * 10
    t = torch.randn(7, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = max_over_queries(q, t)
    assert s.dtype == torch.float32 and torch.allclose(s, max_over_queries(q, t), atol=1e-5)
    assert torch.isfinite(got).all() and ref.shape == got.shape
