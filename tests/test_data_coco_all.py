"""MS-COCO 2014 with all 80 categories (dataset ``coco``: CoMC's all-labels task) and
NUS-WIDE's 81-concept standard multi-label set (``nus-wide-81``: Epsilon Table 4), each
parsed from a tiny release in the official format that the test builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import coco_all, nus_wide, prepare_dataset
from pipelines.data.prepared import PreparedDataset
from pipelines.data.splits import ParseError

try:
    from tests import release_fixtures as rf
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import release_fixtures as rf


def _expected(rel: rf.CocoRelease, split: str) -> tuple[list[str], np.ndarray]:
    cat_ids = sorted(cid for cid, _ in rf.COCO_CATEGORIES)
    ids, rows = [], []
    for im in rel.images[split]:
        cats = rel.labels[split][im["file_name"]]
        if cats:  # annotated images only
            ids.append(im["file_name"])
            rows.append([1 if c in cats else -1 for c in cat_ids])
    return ids, np.asarray(rows, dtype=np.int8)


def test_coco_all_80_labels_exact(tmp_path: Path) -> None:
    rel = rf.build_coco(tmp_path / "coco")
    prepare_dataset("coco", rel.root, tmp_path / "out")  # the dispatcher the stage uses
    ds = PreparedDataset.load(tmp_path / "out")
    space = ds.label_space
    assert (space.n_seen, space.n_unseen) == (80, 0)
    assert [lab.id for lab in space.seen] == [str(c) for c, _ in sorted(rf.COCO_CATEGORIES)]
    assert space.seen[0].name == "person" and space.seen[-1].name == "toothbrush"
    for split in ("train", "test"):
        ids, labels = _expected(rel, split)
        assert ds.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(ds.splits[split].labels, labels)
    test = ds.splits["test"]
    col = {lab.name: j for j, lab in enumerate(space.seen)}
    # traffic light (outside the 48/17 split) is a label here; airplane (unseen there) too
    r = ids.index(next(f for f, c in rel.labels["test"].items() if c == {10}))
    assert test.labels[r, col["traffic light"]] == 1 and (test.labels[r] == 1).sum() == 1
    r = ids.index(next(f for f, c in rel.labels["test"].items() if c == {1, 5, 17}))
    assert {space.seen[j].name for j in np.flatnonzero(test.labels[r] == 1)} == {
        "person",
        "airplane",
        "cat",
    }
    assert ds.meta["test_images"]["images_without_annotation"] == 1
    assert ds.meta["test_images"]["crowd_annotations"] == 1
    man = ds.manifest.filter(ds.manifest["split"] == "test")
    assert man["url"][0] == f"http://images.cocodataset.org/val2014/{man['image_id'][0]}"
    saved = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert len(saved["seen"]) == 80 and saved["unseen"] == []


def test_coco_all_errors_name_file_and_key(tmp_path: Path) -> None:
    rel = rf.build_coco(tmp_path / "coco")
    for sub in ("val2014", "train2014"):
        path = rel.root / "annotations" / f"instances_{sub}.json"
        obj = json.loads(path.read_text())
        obj["categories"][0]["name"] = "human"
        path.write_text(json.dumps(obj))
        if sub == "val2014":
            with pytest.raises(ParseError, match="instances_val2014.json.*categories differ"):
                coco_all.parse(rel.root)
    with pytest.raises(ParseError, match="category #0 in id order is 'human'.*'person'"):
        coco_all.parse(rel.root)
    (rel.root / "annotations" / "instances_train2014.json").unlink()
    with pytest.raises(ParseError, match="instances_train2014.json"):
        coco_all.parse(rel.root)
    with pytest.raises(ValueError, match="drop_missing needs images_dir"):
        coco_all.parse(rel.root, drop_missing=True)


def test_coco_all_drop_missing_images(tmp_path: Path) -> None:
    rel = rf.build_coco(tmp_path / "coco")
    imgs = tmp_path / "imgs"
    (imgs / "val2014").mkdir(parents=True)
    keep = next(f for f, c in rel.labels["test"].items() if c)
    (imgs / "val2014" / keep).write_bytes(b"\xff\xd8jpeg")
    ds = coco_all.parse(rel.root, images_dir=imgs, drop_missing=True)
    assert ds.splits["test"].image_ids.tolist() == [keep]
    assert len(ds.splits["train"].image_ids) == 0
    assert ds.meta["missing_images"]["test"] == 4  # 5 annotated test images, 1 on disk


def test_nus_wide_concepts81_is_the_standard_multilabel_set(tmp_path: Path) -> None:
    rel = rf.build_nus_wide(tmp_path / "release")
    (rel.root / "NUS_WID_Tags" / "AllTags1k.txt").unlink()  # tags are not read
    ds = nus_wide.parse(rel.root, label_set="concepts81")
    assert ds.label_space.n_seen == 81 and ds.label_space.n_unseen == 0
    assert [lab.id for lab in ds.label_space.seen] == rel.concepts
    for split in ("train", "test"):
        want_ids = [im.path for im in rel.images if im.split == split]
        want = [[1 if c in im.concepts else -1 for c in rel.concepts] for im in rel.images]
        want = [w for w, im in zip(want, rel.images, strict=True) if im.split == split]
        assert ds.splits[split].image_ids.tolist() == want_ids
        np.testing.assert_array_equal(ds.splits[split].labels, np.asarray(want, dtype=np.int8))
    train = ds.splits["train"]
    col = {c: j for j, c in enumerate(rel.concepts)}
    r = train.image_ids.tolist().index("actor/0001_2124494179.jpg")
    assert train.labels[r, col["sky"]] == 1  # known on train rows: the classic setting
    assert ds.meta["conventions"]["label_set"] == "concepts81"
    with pytest.raises(ValueError, match="label_set"):
        nus_wide.parse(rel.root, label_set="tags")
    with pytest.raises(ValueError, match="no unseen labels"):
        nus_wide.parse(rel.root, label_set="concepts81", drop_test_no_positive="unseen")
    dropped = nus_wide.parse(rel.root, label_set="concepts81", drop_test_no_positive="any")
    kept = dropped.splits["test"].labels
    assert len(kept) and (kept == 1).any(axis=1).all()


def test_folder_images_find_coco_files_in_their_split_folders(tmp_path: Path) -> None:
    """``images:`` may point at the folder the official zips extract into (train2014/ and
    val2014/ side by side) while image ids are bare COCO file names."""
    from PIL import Image

    from pipelines.data.images import FolderImages

    names = ["COCO_val2014_000000000042.jpg", "COCO_train2014_000000000009.jpg"]
    for name, colour in zip(names, ((255, 0, 0), (0, 0, 255)), strict=True):
        sub = tmp_path / name.split("_")[1]
        sub.mkdir()
        Image.new("RGB", (40, 30), colour).save(sub / name)
    src = FolderImages(tmp_path, np.asarray(names))
    imgs = src.get([0, 1], 16)
    assert imgs.shape == (2, 16, 16, 3)
    assert imgs[0, 8, 8, 0] > 200 and imgs[1, 8, 8, 2] > 200  # each file, not the other
    with pytest.raises(FileNotFoundError):
        FolderImages(tmp_path, np.asarray(["COCO_val2014_000000000001.jpg"])).get([0], 16)
