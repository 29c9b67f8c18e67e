"""Weights and activation of every real backbone, built offline from random checkpoints.

OpenAI trained CLIP with QuickGELU; open_clip 3.3 builds ViT-B-16, ViT-B-32, RN50 and
RN101 with nn.GELU and only warns when the ``openai`` tag is loaded into them. Here each
backbone of params.real.yaml is built through the stages' own loader (``load_backbone``)
with open_clip's download replaced by a local checkpoint of random values in the layout
open_clip expects, and the towers' activation class is checked against what the weights
were trained with. A checkpoint that does not fit, or a tag open_clip does not know, is
one error naming the backbone, the file and the fix: never a warning and a random tower.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pipelines.cells import load_backbone
from pipelines.config import REPO_ROOT, load_params
from pipelines.vlp.backbone import tower_activations

REAL = REPO_ROOT / "params.real.yaml"
MARK = 1.2345  # logit_scale of every random checkpoint: proves the file was loaded

# What the weights were trained with, from their publishers (not from our code): OpenAI's
# CLIPs used QuickGELU (x * sigmoid(1.702 x), CLIP's model.py); VGG19 is a ReLU CNN.
TRAINED_WITH = {"open_clip:openai": {"QuickGELU"}}


def random_checkpoint(model: str, out: Path) -> Path:
    """A checkpoint of ``model`` in open_clip's state-dict layout, zeros but for a marker
    (shapes read off a model built on the meta device: nothing big is initialised)."""
    with torch.device("meta"):
        model_ = open_clip.create_model(model, device="meta")
        shapes = {k: v.shape for k, v in model_.state_dict().items()}
    state = {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}
    state["logit_scale"] = torch.full(shapes["logit_scale"], MARK, dtype=torch.float16)
    save_file(state, str(out))
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            made[model] = random_checkpoint(model, root / f"{model}.safetensors")
        return made[model]

    return get


@pytest.fixture
def offline_hub(monkeypatch, checkpoints):
    """open_clip's download returns the local random checkpoint of the tag's architecture."""
    asked: list[str] = []
    by_hub = {
        open_clip.pretrained.get_pretrained_cfg(m, t)["hf_hub"]: m
        for m, t in open_clip.list_pretrained()
        if open_clip.pretrained.get_pretrained_cfg(m, t).get("hf_hub")
    }

    def download(cfg, *args, **kwargs):
        model = by_hub[cfg["hf_hub"]].removesuffix("-quickgelu")
        asked.append(model)
        return str(checkpoints(model))

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download)
    return asked


def real_backbones() -> list[str]:
    return list(load_params(REAL, check_methods=False).backbones)


@pytest.mark.parametrize("name", real_backbones())
def test_every_real_backbone_has_the_activation_its_weights_were_trained_with(
    name, offline_hub, tmp_path
):
    params = load_params(REAL, check_methods=False)
    cfg = params.backbones[name]
    if cfg.model.startswith("torchvision:"):  # a file: checkpoint of the CNN's trunk
        import torchvision

        with torch.device("meta"):
            net = getattr(torchvision.models, cfg.model.removeprefix("torchvision:"))()
        trunk = {k: torch.zeros(v.shape) for k, v in net.state_dict().items() if "features" in k}
        ckpt = tmp_path / "cnn.safetensors"
        save_file(trunk, ckpt)
        params = load_params(
            REAL, {"backbones": {name: {"weights": f"file:{ckpt}"}}}, check_methods=False
        )
        expected: set[str] = set()
    else:
        assert cfg.weights in TRAINED_WITH, f"{name}: add what {cfg.weights} was trained with"
        expected = TRAINED_WITH[cfg.weights]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="QuickGELU mismatch")
        bb = load_backbone(params, name)
    model = bb.model
    assert tower_activations(model) == expected
    if expected:  # both towers: the text transformer's MLPs and the ViT's (not the RN trunk)
        assert tower_activations(model.transformer) == expected
        assert offline_hub == [cfg.model]
        assert float(model.logit_scale.detach()) == pytest.approx(MARK, abs=1e-3)


def _file_params(tmp_path, weights: str, model: str = "ViT-B-16", **extra):
    raw = {
        "datasets": {"d": {"source": "toyworld", "backbone": "b"}},
        "backbones": {"b": {"model": model, "weights": weights, **extra}},
        "variants": {"r": {"method": "random"}},
        "tables": {"t": {"title": "t", "datasets": ["d"], "rows": ["r"]}},
        "tracking": {"enabled": False},
        "device": "cpu",
    }
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_file_checkpoint_of_openai_weights_needs_its_activation_declared(tmp_path, checkpoints):
    ckpt = checkpoints("ViT-B-16")
    with pytest.raises(FileNotFoundError) as err:
        load_backbone(_file_params(tmp_path, f"file:{ckpt}"), "b")
    msg = str(err.value)
    assert "backbone 'b'" in msg and str(ckpt) in msg and "backbones.b.quick_gelu" in msg
    bb = load_backbone(_file_params(tmp_path, f"file:{ckpt}", quick_gelu=True), "b")
    assert tower_activations(bb.model) == {"QuickGELU"}
    assert float(bb.model.logit_scale.detach()) == pytest.approx(MARK, abs=1e-3)


def test_a_checkpoint_whose_keys_do_not_fit_is_one_error(tmp_path):
    ckpt = random_checkpoint("ovml-tiny-rn", tmp_path / "rn.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileNotFoundError) as err:
            load_backbone(_file_params(tmp_path, f"file:{ckpt}", model="ovml-tiny-vit"), "b")
    msg = str(err.value)
    assert msg.count("\n") == 0, "one line, not torch's list of every key"
    assert "backbone 'b'" in msg and str(ckpt) in msg
    assert "do not fit the ovml-tiny-vit architecture" in msg and "missing keys" in msg
    assert "backbones.b.weights" in msg  # what to do
    assert not [w for w in caught if "QuickGELU" in str(w.message)]


def test_a_tag_open_clip_does_not_know_is_one_error_before_any_download(tmp_path, offline_hub):
    with pytest.raises(FileNotFoundError) as err:
        load_backbone(_file_params(tmp_path, "open_clip:opneai"), "b")
    msg = str(err.value)
    assert "backbone 'b'" in msg and "'opneai'" in msg and "openai" in msg.split("tags:")[1]
    assert "backbones.b.weights" in msg
    assert offline_hub == []  # nothing was fetched, no random tower was built


def test_a_declared_activation_that_contradicts_the_tag_is_an_error(tmp_path, offline_hub):
    with pytest.raises(FileNotFoundError, match="contradicts the tag 'openai'"):
        load_backbone(_file_params(tmp_path, "open_clip:openai", quick_gelu=False), "b")
