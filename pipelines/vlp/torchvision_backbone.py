"""ImageNet CNN backbones from torchvision, weights from a local safetensors file: the
VGG19 of Epsilon Table 6 (and of LESA / BiAM / (ML)²P-Encoder).

``model: torchvision:vgg19`` in params; ``weights: file:/path/vgg19.safetensors``. The
weights are torchvision's ImageNet checkpoint converted once to safetensors (no pickle is
ever loaded here)::

    python -c "import torch, safetensors.torch as st; \\
      st.save_file(torch.load('vgg19-dcbb9e9d.pth', weights_only=True), 'vgg19.safetensors')"

Tokens: the last conv block's 14 x 14 x 512 map at 224 px (before the last max-pool, as
BiAM and LESA read VGG19) is the patch grid (B, 196, 512); the global token is its mean.
There is no text tower: label embeddings come from word vectors
(``label_embeddings: word_vectors`` in Epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.vlp.backbone_model import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("vgg19", "vgg16")


@dataclass
class TorchvisionBackbone(Backbone):
    """A torchvision CNN behind the Backbone interface (images only)."""

    @property
    def image_size(self) -> int:
        return 224

    @property
    def embed_dim(self) -> int:
        return 512

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return IMAGENET_MEAN, IMAGENET_STD

    def image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.model(pixels)  # (B, 512, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens.mean(dim=1), tokens

    def text_features(self, texts: list[str]) -> torch.Tensor:
        raise TypeError(
            f"{self.name}: a torchvision CNN has no text tower; give the method word-vector "
            "label embeddings (Epsilon: label_embeddings: word_vectors)"
        )


def create_torchvision_backbone(
    model: str, weights: str, *, device: torch.device, name: str | None = None
) -> TorchvisionBackbone:
    """``model`` = ``torchvision:<arch>``; ``weights`` = ``file:<.safetensors>`` or ``none``."""
    import torchvision
    from safetensors.torch import load_file

    arch = model.removeprefix("torchvision:")
    if arch not in ARCHS:
        raise ValueError(f"{model}: unsupported torchvision backbone (known: {ARCHS})")
    net = getattr(torchvision.models, arch)(weights=None)
    if weights.startswith("file:"):
        path = Path(weights.removeprefix("file:"))
        if not path.exists():
            raise FileNotFoundError(f"backbone weights {path} do not exist")
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: give the weights as .safetensors (convert torchvision's .pth once; "
                "see pipelines/vlp/torchvision_backbone.py): pickles are never loaded"
            )
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        missing, _ = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith("features.")]  # the head is not used
        if missing:
            raise ValueError(f"{path}: not {arch} weights (missing e.g. {missing[:3]})")
    elif weights != "none":
        raise ValueError(f"{model}: weights must be 'file:<path>.safetensors' or 'none'")
    trunk = net.features[:-1].to(device).eval()  # up to conv5_4 + ReLU, before the last pool
    return TorchvisionBackbone(name or model, trunk, None, None, device)
