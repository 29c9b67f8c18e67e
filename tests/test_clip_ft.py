"""CLIP-FT (MKT's baseline): the image tower trains, the frozen text side classifies."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.methods.clip_ft import ClipFT, ClipFTModule, Config
from pipelines.train import Batch
from tests.test_train import SEEN, UNSEEN, fake_context

FAST = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "input_mode": "images"}


def test_only_the_image_tower_trains_and_unseen_labels_use_frozen_text(tmp_path):
    ctx = fake_context(tmp_path)
    module = ClipFTModule(Config(train=FAST), ctx)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("tower.visual.") for n in trainable)
    text = ctx.label_embeddings("pool").float()
    assert torch.allclose(module.text, text)
    pixels = torch.randn(2, 3, 64, 64)
    idx = torch.arange(2)
    full = module(Batch(idx, pixels=pixels), seen_only=False)
    seen = module(Batch(idx, pixels=pixels), seen_only=True)
    assert full.shape == (2, len(SEEN) + len(UNSEEN)) and seen.shape == (2, len(SEEN))
    assert torch.allclose(full[:, : len(SEEN)], seen)
    # cosine scores with the tower's own embedding: what zero-shot CLIP scores before training
    image, _ = module.tower(pixels)
    assert torch.allclose(full, image @ torch.nn.functional.normalize(text, dim=-1).T, atol=1e-5)


def test_fit_lowers_the_ranking_loss_and_moves_only_the_tower(tmp_path):
    ctx = fake_context(tmp_path, n_train=48)
    method = ClipFT(Config(train=FAST))
    summary = method.fit(ctx)
    losses = [h["train_loss"] for h in summary["history"]]
    assert summary["input_mode"] == "images" and len(losses) == 3
    assert losses[-1] < losses[0]
    scores = method.predict(ctx)
    assert scores.shape == (len(ctx.test_labels), len(SEEN) + len(UNSEEN))
    assert np.isfinite(scores).all()
    before = ctx.backbone.model.visual.state_dict()
    after = {k.removeprefix("tower.visual."): v for k, v in method.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert torch.equal(method.state_dict()["text"], ctx.label_embeddings("pool").float())
