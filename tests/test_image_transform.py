"""The image transform is declared data: squash or centre crop, per dataset (and checked
per variant), recorded with the features, and a change reruns them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.data.images import FolderImages, ImageTransform, NpyImages

RED = (255, 0, 0)


def _red(pixels: np.ndarray) -> int:
    """How many pixels are clearly red."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 60) & (b < 60)).sum())


@pytest.fixture
def photo_4x3(tmp_path):
    """A 400 x 300 photo with an object (red) in its leftmost 40 columns."""
    img = Image.new("RGB", (400, 300), (255, 255, 255))
    img.paste(RED, (0, 0, 40, 300))
    img.save(tmp_path / "edge.png")
    return tmp_path


def test_an_object_at_the_edge_of_a_4x3_photo_survives_squash_and_is_cut_by_a_centre_crop(
    photo_4x3,
):
    ids = np.array(["edge.png"])
    squashed = FolderImages(photo_4x3, ids, ImageTransform("squash")).get([0], 224)[0]
    cropped = FolderImages(photo_4x3, ids, ImageTransform("center_crop")).get([0], 224)[0]
    assert squashed.shape == cropped.shape == (224, 224, 3)
    # squash keeps the whole width: the object is the left 40/400 of the 224 columns
    assert _red(squashed) > 0.9 * 224 * 22
    assert _red(squashed[:, :20]) == 224 * 20
    # short side 300 -> 224 makes the width 299: the centre crop drops 37 columns a side,
    # the object (0-30 after resizing) with them
    assert _red(cropped) == 0


def test_crop_pct_resizes_the_short_side_to_size_over_crop_pct(tmp_path):
    """MKT's eval transform (crop_pct 0.875: 256, then the centre 224) drops a 16 px frame."""
    img = Image.new("RGB", (256, 256), RED)
    img.paste((255, 255, 255), (16, 16, 240, 240))
    img.save(tmp_path / "frame.png")
    ids = np.array(["frame.png"])
    mkt = ImageTransform("center_crop", crop_pct=0.875)
    assert _red(FolderImages(tmp_path, ids, mkt).get([0], 224)[0]) == 0
    clip = ImageTransform("center_crop")  # crop_pct 1: the whole square, resized
    assert _red(FolderImages(tmp_path, ids, clip).get([0], 224)[0]) > 4 * 224 * 10
    with pytest.raises(ValueError, match="crop_pct"):
        ImageTransform("squash", crop_pct=0.875)


def test_generated_square_arrays_pass_through_unless_the_transform_cuts(tmp_path):
    arr = np.full((2, 64, 64, 3), 255, dtype=np.uint8)
    arr[:, :, :4] = RED  # a 4 px stripe on the left
    np.save(tmp_path / "images_test.npy", arr)
    ids = np.array(["a", "b"])
    same = NpyImages(tmp_path / "images_test.npy", ids, ImageTransform("squash")).get([0, 1], 32)
    assert same.shape == (2, 64, 64, 3) and np.array_equal(same, arr)  # the backbone resizes
    cut = NpyImages(
        tmp_path / "images_test.npy", ids, ImageTransform("center_crop", crop_pct=0.875)
    ).get([0, 1], 32)
    assert cut.shape == (2, 32, 32, 3) and _red(cut) == 0


def test_the_features_stage_reads_the_transform_and_a_change_reruns_it(tmp_path, tiny_params_dict):
    from pipelines.config import load_params
    from pipelines.graph import build_graph, fingerprint
    from tests.conftest import write_params

    params = load_params(write_params(tmp_path / "a", tiny_params_dict))
    assert params.datasets["toyworld"].transform.mode == "squash"  # the source's default
    tiny_params_dict["datasets"]["toyworld"]["transform"] = {
        "mode": "center_crop",
        "crop_pct": 0.875,
    }
    changed = load_params(write_params(tmp_path / "b", tiny_params_dict))
    g1, g2 = build_graph(params), build_graph(changed)
    feats = "features@toyworld@toy-clip"
    assert "datasets.toyworld.transform" in g1[feats].params
    assert fingerprint(params, g1, feats) != fingerprint(changed, g2, feats)
    assert fingerprint(params, g1, "dataset@toyworld") == fingerprint(
        changed, g2, "dataset@toyworld"
    )
    # freshness by outputs: the cell reads the features stage, so a rebuilt cache whose
    # bytes differ reruns it through the cache's output digest (tests/test_graph.py)
    cell = "cell@toyworld@clip_zeroshot"
    assert feats in g1[cell].deps


def test_a_variant_whose_paper_needs_another_transform_than_its_dataset_is_a_params_error(
    tmp_path, tiny_params_dict
):
    from pipelines.config import ConfigError, load_params
    from tests.conftest import write_params

    tiny_params_dict["variants"]["clip_zeroshot"]["transform"] = {"mode": "squash"}
    load_params(write_params(tmp_path / "ok", tiny_params_dict))  # agrees with the dataset
    tiny_params_dict["variants"]["clip_zeroshot"]["transform"] = {"mode": "center_crop"}
    with pytest.raises(ConfigError) as err:
        load_params(write_params(tmp_path / "bad", tiny_params_dict))
    msg = str(err.value)
    assert "variants.clip_zeroshot.transform" in msg and "datasets.toyworld.transform" in msg
    assert "declare a dataset entry" in msg
    tiny_params_dict["datasets"]["toyworld"]["transform"] = {"mode": "squash", "crop_pct": 0.5}
    tiny_params_dict["variants"]["clip_zeroshot"].pop("transform")
    with pytest.raises(ConfigError, match="crop_pct applies to center_crop only"):
        load_params(write_params(tmp_path / "bad2", tiny_params_dict))


def test_every_real_dataset_declares_its_papers_transform():
    """params.real.yaml spells the transform out (DVC tracks written keys only) and every
    paper variant that states one agrees with its datasets (load_params checks it)."""
    import yaml

    from pipelines.config import REPO_ROOT, load_params

    raw = yaml.safe_load((REPO_ROOT / "params.real.yaml").read_text())
    assert all("transform" in ds for ds in raw["datasets"].values())
    params = load_params(REPO_ROOT / "params.real.yaml", check_methods=False)
    assert {ds.transform.mode for ds in params.datasets.values()} == {"squash"}
    stated = {v for v, cfg in params.variants.items() if cfg.transform is not None}
    assert {"qks-nus-wide", "c2srt", "rcnn-nus-wide", "comc-coco"} <= stated
