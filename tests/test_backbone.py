"""Image tokens of both open_clip tower kinds: ViT patches and ResNet cells."""

from __future__ import annotations

import pytest
import torch

from pipelines.vlp.backbone import create_backbone


@pytest.mark.parametrize(("model", "n_tokens"), [("ovml-tiny-vit", 64), ("ovml-tiny-rn", 4)])
def test_pooled_token_is_open_clips_image_embedding(model, n_tokens):
    torch.manual_seed(0)
    bb = create_backbone(model)
    bb.model.eval()
    x = torch.randn(3, 3, 64, 64)
    pooled, tokens = bb.image_tokens(x)
    assert torch.allclose(pooled, bb.model.encode_image(x), atol=1e-5)
    assert tokens.shape == (3, n_tokens, bb.embed_dim)


def test_resnet_cells_are_what_the_attention_pool_averages():
    """With uniform attention (q, k zeroed) and no position embedding, the attention pool
    returns the mean of its values over [mean cell; cells]: exactly the mean of the dense
    tokens, since the value and output projections are affine."""
    torch.manual_seed(0)
    bb = create_backbone("ovml-tiny-rn")
    pool = bb.model.visual.attnpool
    with torch.no_grad():
        for lin in (pool.q_proj, pool.k_proj):
            lin.weight.zero_()
            lin.bias.zero_()
        pool.positional_embedding.zero_()
    bb.model.eval()
    pooled, tokens = bb.image_tokens(torch.randn(2, 3, 64, 64))
    assert torch.allclose(pooled, tokens.mean(dim=1), atol=1e-5)
    assert not torch.allclose(tokens[:, 0], tokens[:, 1])  # cells differ: spatial features
