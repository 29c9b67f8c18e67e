"""MS-COCO 2014 (48/17) and PASCAL VOC 2007 parsers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.data import coco, reference, voc
from pipelines.data.prepared import PreparedDataset
from pipelines.data.splits import ParseError

try:
    from tests import release_fixtures as rf
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import release_fixtures as rf

SHARED = reference.REPO_ROOT.parent / "shared" / "data"

# =========================================================================== COCO


def coco_expected(rel: rf.CocoRelease, split: str, *, exclude_unseen: bool = False):
    ref = reference.coco_zsl_split()
    cat_ids = [cid for cid, _ in rf.COCO_CATEGORIES]
    seen = [cat_ids[i] for i in ref["seen"]]
    unseen = [cat_ids[i] for i in ref["unseen"]]
    ids, rows = [], []
    for im in rel.images[split]:
        cats = rel.labels[split][im["file_name"]]
        if not cats:
            continue
        if split == "train":
            if not cats & set(seen):
                continue
            if exclude_unseen and cats & set(unseen):
                continue
            row = [1 if c in cats else -1 for c in seen] + [0] * len(unseen)
        else:
            row = [1 if c in cats else -1 for c in [*seen, *unseen]]
        ids.append(im["file_name"])
        rows.append(row)
    return ids, np.asarray(rows, dtype=np.int8)


@pytest.fixture()
def coco_release(tmp_path: Path) -> rf.CocoRelease:
    return rf.build_coco(tmp_path / "coco")


@pytest.fixture()
def coco_prepared(coco_release: rf.CocoRelease, tmp_path: Path) -> PreparedDataset:
    coco.prepare(coco_release.root, tmp_path / "out")
    return PreparedDataset.load(tmp_path / "out")


def test_coco_split_names(coco_prepared: PreparedDataset) -> None:
    path = SHARED / "coco/zsl_split_48_17.json"
    obj = json.loads(
        (path if path.is_file() else reference.reference_path(reference.COCO_ZSL_SPLIT)).read_text()
    )
    assert [lab.name for lab in coco_prepared.label_space.seen] == obj["seen_48"]["names"]
    assert [lab.name for lab in coco_prepared.label_space.unseen] == obj["unseen_17"]["names"]
    ids = dict(rf.COCO_CATEGORIES)
    for lab in coco_prepared.label_space.all:
        assert ids[int(lab.id)] == lab.name  # id = COCO category id as a string
    assert coco_prepared.label_space.unseen[0].id == "5"  # airplane


def test_coco_labels_exact(coco_release: rf.CocoRelease, coco_prepared: PreparedDataset) -> None:
    for split in ("train", "test"):
        ids, labels = coco_expected(coco_release, split)
        assert coco_prepared.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(coco_prepared.splits[split].labels, labels)
    train = coco_prepared.splits["train"].image_ids.tolist()
    # {1,3}, {1,5,17} (unseen object kept, unseen cols 0), {90} (toothbrush is seen)
    assert len(train) == 3
    assert (coco_prepared.splits["train"].labels[:, 48:] == 0).all()
    test = coco_prepared.splits["test"].image_ids.tolist()
    assert len(test) == 5  # every annotated val image, incl. the traffic-light-only one
    col = {lab.name: j for j, lab in enumerate(coco_prepared.label_space.all)}
    t = coco_prepared.splits["test"].labels
    assert t[1, col["airplane"]] == 1 and t[1, col["person"]] == -1
    assert (t[3] == -1).all()  # traffic light (outside the 65) only
    assert t[4, col["toothbrush"]] == 1 and t[4, col["scissors"]] == 1


def test_coco_meta(coco_prepared: PreparedDataset) -> None:
    m = coco_prepared.meta
    assert m["train_images"]["images_without_annotation"] == 1
    assert m["train_images"]["images_without_seen_annotation"] == 2
    assert m["train_images"]["images_with_unseen_object"] == 1
    assert m["train_images"]["crowd_annotations"] == 1
    assert m["test_images"]["annotations_outside_65"] == 1
    # val: {1,3} {5} {1,5,17} {10} {90,87}; unseen among them: 5 airplane, 17 cat, 87 scissors
    assert m["test_without_positive"] == {"seen": 2, "unseen": 2, "any": 1}


def test_coco_manifest(coco_prepared: PreparedDataset) -> None:
    man = coco_prepared.manifest
    assert man.columns == ["image_id", "url", "md5", "split"]
    row = man.filter(pl.col("split") == "test").row(0, named=True)
    assert row["url"] == f"http://images.cocodataset.org/val2014/{row['image_id']}"
    assert row["md5"] is None
    assert man.height == 8


def test_coco_options(coco_release: rf.CocoRelease, tmp_path: Path) -> None:
    ds = coco.prepare(coco_release.root, tmp_path / "a", exclude_train_with_unseen=True)
    ids, labels = coco_expected(coco_release, "train", exclude_unseen=True)
    assert ds.splits["train"].image_ids.tolist() == ids
    np.testing.assert_array_equal(ds.splits["train"].labels, labels)
    ds = coco.prepare(coco_release.root, tmp_path / "b", drop_test_no_positive="unseen")
    assert len(ds.splits["test"].image_ids) == 3
    ds = coco.prepare(coco_release.root, tmp_path / "c", drop_test_no_positive="any")
    assert len(ds.splits["test"].image_ids) == 4
    assert ds.meta["dropped"] == {"train": 0, "test": 1}


def test_coco_images_dir(coco_release: rf.CocoRelease, tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    (imgs / "val2014").mkdir(parents=True)
    keep = coco_release.images["test"][0]["file_name"]
    (imgs / "val2014" / keep).write_bytes(b"jpeg")
    # a prepare that keeps no image in a split is an error (issue 8, finding 7)
    with pytest.raises(ValueError, match="split 'train' keeps 0 images"):
        coco.prepare(coco_release.root, tmp_path / "o", images_dir=imgs, drop_missing=True)
    assert not (tmp_path / "o").exists()
    (imgs / "train2014").mkdir()
    keep_train = coco_release.images["train"][0]["file_name"]
    (imgs / "train2014" / keep_train).write_bytes(b"jpeg")
    ds = coco.prepare(coco_release.root, tmp_path / "o", images_dir=imgs, drop_missing=True)
    assert ds.splits["test"].image_ids.tolist() == [keep]
    assert ds.meta["missing_images"]["test"] == 4 and ds.meta["missing_images"]["train"] == 2
    assert len(ds.splits["train"].image_ids) == 1


def test_coco_quirks_bom_indent_backslash(tmp_path: Path) -> None:
    rel = rf.build_coco(tmp_path / "c", bom=True, indent=1)
    p = rel.instances("test")
    obj = json.loads(p.read_text(encoding="utf-8-sig"))
    obj["images"][0]["file_name"] = "val2014\\" + obj["images"][0]["file_name"]
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(obj, indent=1).replace("\n", "\r\n").encode())
    ds = coco.prepare(rel.root, tmp_path / "o")
    assert ds.splits["test"].image_ids[0].startswith("val2014/COCO_val2014_")


def _coco_truncated(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("test")
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[: len(lines) // 2]))
    return p.name, len(lines) // 2


def _coco_unknown_category(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("train")
    obj = json.loads(p.read_text())
    obj["annotations"][3]["category_id"] = 12  # COCO has no category 12
    p.write_text(json.dumps(obj))
    return p.name, "annotations[3]"


def _coco_unknown_image(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("test")
    obj = json.loads(p.read_text())
    obj["annotations"][1]["image_id"] = 999999
    p.write_text(json.dumps(obj))
    return p.name, "annotations[1]"


def _coco_duplicate_image(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("train")
    obj = json.loads(p.read_text())
    obj["images"][2]["id"] = obj["images"][0]["id"]
    p.write_text(json.dumps(obj))
    return p.name, "images[2]"


def _coco_renamed_category(rel: rf.CocoRelease) -> tuple[str, object]:
    for split in ("train", "test"):
        p = rel.instances(split)
        obj = json.loads(p.read_text())
        obj["categories"][4]["name"] = "aeroplane"
        p.write_text(json.dumps(obj))
    return "instances_train2014.json", "categories"


def _coco_categories_differ(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("test")
    obj = json.loads(p.read_text())
    obj["categories"][79]["name"] = "tooth brush"
    p.write_text(json.dumps(obj))
    return p.name, "categories"


def _coco_missing_key(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("train")
    obj = json.loads(p.read_text())
    del obj["annotations"]
    p.write_text(json.dumps(obj))
    return p.name, "annotations"


def _coco_bad_annotation(rel: rf.CocoRelease) -> tuple[str, object]:
    p = rel.instances("train")
    obj = json.loads(p.read_text())
    obj["annotations"][0]["category_id"] = "person"
    p.write_text(json.dumps(obj))
    return p.name, "annotations[0]"


COCO_CORRUPTIONS = [
    _coco_truncated,
    _coco_unknown_category,
    _coco_unknown_image,
    _coco_duplicate_image,
    _coco_renamed_category,
    _coco_categories_differ,
    _coco_missing_key,
    _coco_bad_annotation,
]


@pytest.mark.parametrize("corrupt", COCO_CORRUPTIONS, ids=lambda f: f.__name__[6:])
def test_coco_malformed(tmp_path: Path, corrupt) -> None:
    rel = rf.build_coco(tmp_path / "c", indent=1)
    fname, where = corrupt(rel)
    out = tmp_path / "out"
    with pytest.raises(ParseError) as info:
        coco.prepare(rel.root, out)
    err = info.value
    assert Path(err.file).name == fname
    assert err.line == where, str(err)
    assert f"{fname}:{where}: " in str(err) and " — " in str(err)
    assert not out.exists()


def test_coco_missing_file(coco_release: rf.CocoRelease, tmp_path: Path) -> None:
    coco_release.instances("test").unlink()
    with pytest.raises(ParseError, match="instances_val2014.json not found"):
        coco.prepare(coco_release.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# =========================================================================== VOC


def voc_expected(rel: rf.VocRelease, split: str, unseen: tuple[str, ...] = ()):
    voc_split = "trainval" if split == "train" else "test"
    order = [c for c in rf.VOC_CLASSES if c not in unseen] + list(unseen)
    ids = rel.ids[voc_split]
    labels = np.array([[rel.values[voc_split][c][i] for c in order] for i in ids], dtype=np.int8)
    if split == "train" and unseen:
        labels[:, len(order) - len(unseen) :] = 0
    return ids, labels


@pytest.fixture()
def voc_release(tmp_path: Path) -> rf.VocRelease:
    return rf.build_voc(tmp_path / "voc")


def test_voc_default_all_seen(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    voc.prepare(voc_release.root, tmp_path / "o")
    ds = PreparedDataset.load(tmp_path / "o")
    assert [lab.id for lab in ds.label_space.seen] == list(rf.VOC_CLASSES)
    assert ds.label_space.n_unseen == 0
    names = {lab.id: lab.name for lab in ds.label_space.seen}
    assert names["diningtable"] == "dining table" and names["tvmonitor"] == "tv monitor"
    assert names["aeroplane"] == "aeroplane"
    for split in ("train", "test"):
        ids, labels = voc_expected(voc_release, split)
        assert ds.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(ds.splits[split].labels, labels)
    # exact cells: class 0 (aeroplane), image 0 → (0+0)%7==0 → +1; difficult → 0
    assert ds.splits["train"].labels[0, 0] == 1
    # difficult: class 4 (bottle) on image 1 → (4*3+1) % 11 == 2, no; class 7 (cat), image 1:
    # (7+1) % 7 != 0 and (21+1) % 11 == 0 → 0
    assert voc_release.values["trainval"]["cat"]["000007"] == 0
    assert ds.splits["train"].labels[1, 7] == 0
    assert ds.meta["test_without_positive"].keys() == {"seen", "any"}
    assert ds.meta["train_difficult_cells"] == sum(
        v == 0 for c in rf.VOC_CLASSES for v in voc_release.values["trainval"][c].values()
    )
    assert ds.manifest["url"].null_count() == ds.manifest.height == 9


def test_voc_configurable_unseen(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    unseen = ("cat", "dog")
    ds = voc.prepare(voc_release.root, tmp_path / "o", unseen=unseen)
    assert [lab.id for lab in ds.label_space.unseen] == list(unseen)
    assert "cat" not in [lab.id for lab in ds.label_space.seen]
    for split in ("train", "test"):
        ids, labels = voc_expected(voc_release, split, unseen)
        np.testing.assert_array_equal(ds.splits[split].labels, labels)
    assert (ds.splits["train"].labels[:, 18:] == 0).all()
    assert (ds.splits["test"].labels[:, 18:] != 0).any()


def test_voc_options(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown VOC classes"):
        voc.prepare(voc_release.root, tmp_path / "o", unseen=["unicorn"])
    with pytest.raises(ValueError, match="needs unseen"):
        voc.prepare(voc_release.root, tmp_path / "o", drop_test_no_positive="unseen")
    assert not (tmp_path / "o").exists()
    ds = voc.prepare(
        voc_release.root, tmp_path / "o", unseen=["cat"], drop_test_no_positive="unseen"
    )
    assert (ds.splits["test"].labels[:, -1] == 1).all()


def test_voc_without_split_lists_and_lf(tmp_path: Path) -> None:
    rel = rf.build_voc(tmp_path / "v", crlf=False, with_split_lists=False)
    ds = voc.prepare(rel.root / "VOCdevkit", tmp_path / "o")  # --release = VOCdevkit
    for split in ("train", "test"):
        ids, labels = voc_expected(rel, split)
        assert ds.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(ds.splits[split].labels, labels)


def test_voc_class_file_order_may_differ(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    p = voc_release.main / "cat_test.txt"
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(reversed(lines)))
    ds = voc.prepare(voc_release.root, tmp_path / "o")
    np.testing.assert_array_equal(ds.splits["test"].labels, voc_expected(voc_release, "test")[1])


def test_voc_images_dir(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    imgs = tmp_path / "VOC2007"
    (imgs / "JPEGImages").mkdir(parents=True)
    (imgs / "JPEGImages/000001.jpg").write_bytes(b"jpeg")
    with pytest.raises(ValueError, match="split 'train' keeps 0 images"):  # issue 8, finding 7
        voc.prepare(voc_release.root, tmp_path / "o", images_dir=imgs, drop_missing=True)
    (imgs / "JPEGImages/000005.jpg").write_bytes(b"jpeg")
    ds = voc.prepare(voc_release.root, tmp_path / "o", images_dir=imgs, drop_missing=True)
    assert ds.splits["test"].image_ids.tolist() == ["000001"]
    assert ds.splits["train"].image_ids.tolist() == ["000005"]
    assert ds.meta["missing_images"] == {
        "images_dir": str(imgs),
        "dropped": True,
        "train": 4,
        "test": 3,
    }


def _voc_value(rel: rf.VocRelease) -> tuple[str, int]:
    rf.replace_line(rel.main / "dog_test.txt", 2, "000002  2")
    return "dog_test.txt", 2


def _voc_truncated(rel: rf.VocRelease) -> tuple[str, int]:
    rf.truncate_lines(rel.main / "sofa_trainval.txt", 3)
    return "sofa_trainval.txt", 4


def _voc_unknown_image(rel: rf.VocRelease) -> tuple[str, int]:
    rf.replace_line(rel.main / "cow_trainval.txt", 5, "009999 -1")
    return "cow_trainval.txt", 5


def _voc_fields(rel: rf.VocRelease) -> tuple[str, int]:
    rf.replace_line(rel.main / "cat_test.txt", 1, "000001")
    return "cat_test.txt", 1


def _voc_duplicate(rel: rf.VocRelease) -> tuple[str, int]:
    rf.replace_line(rel.main / "bus_test.txt", 3, "000001 -1")
    return "bus_test.txt", 3


def _voc_split_list_blank(rel: rf.VocRelease) -> tuple[str, int]:
    rf.replace_line(rel.main / "test.txt", 2, "000002 000003")
    return "test.txt", 2


VOC_CORRUPTIONS = [
    _voc_value,
    _voc_truncated,
    _voc_unknown_image,
    _voc_fields,
    _voc_duplicate,
    _voc_split_list_blank,
]


@pytest.mark.parametrize("corrupt", VOC_CORRUPTIONS, ids=lambda f: f.__name__[5:])
def test_voc_malformed(voc_release: rf.VocRelease, tmp_path: Path, corrupt) -> None:
    fname, line = corrupt(voc_release)
    out = tmp_path / "out"
    with pytest.raises(ParseError) as info:
        voc.prepare(voc_release.root, out)
    err = info.value
    assert Path(err.file).name == fname
    assert err.line == line, str(err)
    assert f"{fname}:{line}: " in str(err) and " — " in str(err)
    assert not out.exists()


def test_voc_missing_class_file(voc_release: rf.VocRelease, tmp_path: Path) -> None:
    (voc_release.main / "horse_test.txt").unlink()
    with pytest.raises(ParseError, match="horse_test.txt not found"):
        voc.prepare(voc_release.root, tmp_path / "out")
    with pytest.raises(ParseError, match="ImageSets/Main not found"):
        voc.prepare(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
