"""CLIP-FT (MKT's baseline): the image tower trains, the frozen text side classifies."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.methods.clip_ft import ClipFT, ClipFTModule, Config, PartialTower
from pipelines.train import Batch
from pipelines.vlp.lit import image_stages, split_image_tower
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


# ------------------------------------------------------- unlocked_groups (a timm CNN tower)
@pytest.fixture(scope="module")
def towers_context_factory():
    """fake_context's data on the packaged EfficientNet-Lite0 + MiniLM towers (icon-lit's model
    with untrained projections): what ``unlocked_groups`` splits."""
    from pipelines.vlp.backbone import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("ovml-lite0-minilm", "none")

    def make(tmp_path, **kw):
        return dataclasses.replace(fake_context(tmp_path, **kw), load_backbone=lambda: bb)

    return bb, make


def test_partial_tower_is_the_whole_tower_at_start_and_trains_only_its_suffix(
    tmp_path, towers_context_factory
):
    bb, make = towers_context_factory
    module = ClipFTModule(Config(train=FAST, unlocked_groups=2), make(tmp_path))
    tower = module.tower
    assert isinstance(tower, PartialTower)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("tower.prefix.") for n in trainable)
    assert any(n.startswith("tower.suffix.") for n in trainable)
    assert any(n.startswith("tower.proj.") for n in trainable)
    x = bb.uint8_to_tensor(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), np.uint8))
    module.eval()
    with torch.no_grad():
        whole, _ = bb.encode_images(x)
        torch.testing.assert_close(tower(x), F.normalize(whole, dim=-1), atol=1e-5, rtol=1e-4)


def test_partial_tower_keeps_train_rows_only_while_training(tmp_path, towers_context_factory):
    bb, make = towers_context_factory
    tower = ClipFTModule(Config(train=FAST, unlocked_groups=1), make(tmp_path)).tower
    calls = []
    tower.prefix.register_forward_hook(lambda *a: calls.append(1))
    x = bb.uint8_to_tensor(np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), np.uint8))
    idx = torch.arange(4)
    tower.train()
    first = tower.frozen(x, idx)
    again = tower.frozen(torch.zeros_like(x), idx)  # the kept prefix outputs, not these pixels
    assert len(calls) == 1 and torch.equal(first, again)
    assert tower(x, idx).shape == (4, bb.embed_dim) and len(calls) == 1
    assert tower.prefix.training is False  # frozen BatchNorm statistics
    tower.eval()
    tower(x, idx), tower(x, idx)
    assert len(calls) == 3 and len(tower._kept) == 4  # eval rows are other splits' rows


def test_partial_tower_fit_learns_and_leaves_the_prefix_alone(tmp_path, towers_context_factory):
    bb, make = towers_context_factory
    ctx = make(tmp_path, n_train=48)
    method = ClipFT(Config(train=FAST, unlocked_groups=2))
    summary = method.fit(ctx)
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    state = method.state_dict()
    assert len(image_stages(bb.model.visual.trunk)) > 2
    untouched, _ = split_image_tower(copy.deepcopy(bb.model.visual), 2)
    kept = {k.removeprefix("tower.prefix."): v for k, v in state.items() if "prefix." in k}
    # only the prefix's buffers (BatchNorm statistics) travel with the checkpoint, unchanged
    assert kept and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in kept
    )
    assert all(torch.equal(v, untouched.state_dict()[k]) for k, v in kept.items())
    tower = method.module.tower
    assert all(
        torch.equal(v, untouched.state_dict()[k]) for k, v in tower.prefix.state_dict().items()
    )
    assert not torch.equal(state["tower.proj.proj.weight"], bb.model.visual.head.proj.weight)
    assert np.isfinite(method.predict(ctx)).all()


def test_unlocked_groups_on_a_tower_without_a_timm_trunk_says_what_to_do(tmp_path):
    with pytest.raises(TypeError, match="needs a timm CNN image tower.*drop unlocked_groups"):
        ClipFTModule(Config(train=FAST, unlocked_groups=1), fake_context(tmp_path))
