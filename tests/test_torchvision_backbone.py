"""VGG19 (Epsilon Table 6) through torchvision, weights only from a local safetensors file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipelines.vlp.backbone import create_backbone


def test_vgg19_tokens_and_errors(tmp_path):
    bb = create_backbone("torchvision:vgg19", "none", name="vgg19-imagenet")
    assert (bb.image_size, bb.embed_dim) == (224, 512)
    pixels = bb.uint8_to_tensor(torch.randint(0, 255, (2, 64, 80, 3), dtype=torch.uint8).numpy())
    g, p = bb.encode_images(pixels)
    assert g.shape == (2, 512) and p.shape == (2, 196, 512)  # 14 x 14 conv5_4 grid at 224 px
    assert torch.allclose(g.norm(dim=-1), torch.ones(2), atol=1e-4)
    with pytest.raises(TypeError, match="word-vector"):
        bb.encode_text(["a photo of a cat."])
    # weights come from a .safetensors file; a .pth pickle is refused, a wrong file named
    pth = tmp_path / "vgg19.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors"):
        create_backbone("torchvision:vgg19", f"file:{pth}")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match="not vgg19 weights"):
        create_backbone("torchvision:vgg19", f"file:{wrong}")
    with pytest.raises(FileNotFoundError):
        create_backbone("torchvision:vgg19", f"file:{tmp_path / 'absent.safetensors'}")
    with pytest.raises(ValueError, match="unsupported"):
        create_backbone("torchvision:resnet9000", "none")


def test_vgg19_loads_its_weights_exactly(tmp_path):
    """The real path: a state dict saved as safetensors is what the tokens come from."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.vgg19(weights=None)
    state = {k: v.half() for k, v in ref.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg19-features.safetensors"
    save_file(state, str(path))
    bb = create_backbone("torchvision:vgg19", f"file:{path}")
    x = torch.randn(1, 3, 224, 224)
    want = ref.features[:-1].half().float()(x)
    got = bb.model(x)
    assert torch.allclose(got, want, atol=1e-4)
