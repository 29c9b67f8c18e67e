"""Open Images v4 parser and the sparse-label helper."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.data import open_images, reference
from pipelines.data.prepared import PreparedDataset, Split
from pipelines.data.sparse_labels import (
    SparseLabels,
    SparsePreparedDataset,
    load_sparse_split,
    sparse_path,
)
from pipelines.data.splits import ParseError, read_list

try:
    from tests import release_fixtures as rf
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import release_fixtures as rf

needs_descriptions = pytest.mark.skipif(
    rf.oi_class_descriptions_path() is None,
    reason="needs shared/data/open-images-v4/class-descriptions.csv",
)
SHARED = reference.REPO_ROOT.parent / "shared" / "data"


def merged(anns: list[tuple[str, str, str]]) -> dict[tuple[str, str], int]:
    """(image, MID) → +1/-1 with duplicates merged, positive wins."""
    out: dict[tuple[str, str], int] = {}
    for img, mid, conf in anns:
        v = 1 if conf == "1" else -1
        out[(img, mid)] = max(out.get((img, mid), -1), v)
    return out


def expected(rel: rf.OIRelease, split: str) -> tuple[list[str], np.ndarray]:
    labels = rel.seen + (rel.unseen if split == "test" else [])
    col = {m: j for j, m in enumerate(labels)}
    anns = rel.test_ann if split == "test" else rel.train_ann
    ids_all = rel.test_images if split == "test" else rel.train_images
    if split == "test":
        rows = {img for img, _, _ in anns}
    else:
        rows = {img for img, mid, _ in anns if mid in col}
    ids = [i for i in ids_all if i in rows]
    r = {i: k for k, i in enumerate(ids)}
    out = np.zeros((len(ids), len(rel.seen) + len(rel.unseen)), dtype=np.int8)
    for (img, mid), v in merged(anns).items():
        if mid in col and img in r:
            out[r[img], col[mid]] = v
    return ids, out


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> rf.OIRelease:
    if rf.oi_class_descriptions_path() is None:
        pytest.skip("needs shared/data/open-images-v4/class-descriptions.csv")
    return rf.build_open_images(tmp_path_factory.mktemp("oi") / "release")


@pytest.fixture(scope="module")
def prepared(
    release: rf.OIRelease, tmp_path_factory: pytest.TempPathFactory
) -> SparsePreparedDataset:
    out = tmp_path_factory.mktemp("oi_out") / "prepared"
    open_images.prepare(release.root, out, sparse_train=True)
    return SparsePreparedDataset.load(out)


@pytest.fixture()
def fresh(release: rf.OIRelease, tmp_path: Path) -> rf.OIRelease:
    """A private copy of the release, to corrupt."""
    root = tmp_path / "release"
    shutil.copytree(release.root, root)
    return rf.OIRelease(**{**release.__dict__, "root": root})


# --------------------------------------------------------------------------- label space


@needs_descriptions
def test_seen_is_trainable_and_unseen_is_reference(prepared: SparsePreparedDataset) -> None:
    seen = [lab.id for lab in prepared.label_space.seen]
    unseen = [lab.id for lab in prepared.label_space.unseen]
    trainable = SHARED / "open-images-v4/classes-trainable.txt"
    mids = SHARED / "open-images-v4/unseen_400_mids.txt"
    assert seen == (
        read_list(trainable, "MID") if trainable.is_file() else reference.oi_trainable()
    )
    assert unseen == (read_list(mids, "MID") if mids.is_file() else reference.oi_unseen_400())
    assert len(seen) == 7186 and len(unseen) == 400
    assert prepared.meta["unseen_selection"]["mode"] == "reference"


@needs_descriptions
def test_names_stripped_and_duplicates_kept(
    release: rf.OIRelease, prepared: SparsePreparedDataset
) -> None:
    name = {lab.id: lab.name for lab in prepared.label_space.all}
    assert name[release.notes["anole"]] == "Anole"  # ' Anole' in class-descriptions.csv
    a, b = release.notes["dup_names"]
    assert name[a] == name[b] and a != b
    seen_names = [lab.name for lab in prepared.label_space.seen]
    assert len(seen_names) - len(set(seen_names)) >= 100  # ~108 repeated display names
    unseen_names = {lab.name for lab in prepared.label_space.unseen}
    assert {"Lamborghini", "Snowshoe"} <= unseen_names & set(seen_names)
    names_file = SHARED / "open-images-v4/unseen_400_names.txt"
    if names_file.is_file():
        want = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines()]
        assert [lab.name for lab in prepared.label_space.unseen] == want


# --------------------------------------------------------------------------- labels


@needs_descriptions
def test_test_labels_exact(release: rf.OIRelease, prepared: SparsePreparedDataset) -> None:
    ids, labels = expected(release, "test")
    test = prepared.splits["test"]
    assert test.image_ids.tolist() == ids
    np.testing.assert_array_equal(test.labels, labels)
    assert release.test_images[-1] not in ids  # listed, never annotated
    r = ids.index(release.test_images[-2])  # annotated only outside the label space
    assert (test.labels[r] == 0).all()
    # a few hand-checked cells
    col = {lab.id: j for j, lab in enumerate(prepared.label_space.all)}
    t = {i: k for k, i in enumerate(ids)}
    u = release.unseen
    assert test.labels[t[release.test_images[0]], col[u[0]]] == -1  # k=0 → Confidence 0
    assert test.labels[t[release.test_images[1]], col[u[1]]] == 1
    assert test.labels[t[release.test_images[2]], col[release.seen[102]]] == 1  # conflict → +1
    assert test.labels[t[release.test_images[2]], col[release.seen[2]]] == 1
    assert test.labels[t[release.test_images[0]], col[release.seen[5]]] == 0  # not annotated
    assert prepared.meta["annotations"]["test_conflicting_duplicates"] == 1
    assert prepared.meta["test_without_label_in_label_space"] == 1


@needs_descriptions
def test_train_labels_sparse_exact(release: rf.OIRelease, prepared: SparsePreparedDataset) -> None:
    assert "train" not in prepared.splits
    sp = prepared.sparse_splits["train"]
    ids, labels = expected(release, "train")
    assert sp.image_ids.tolist() == ids
    assert sp.shape == (len(ids), 7586)
    np.testing.assert_array_equal(sp.to_dense(), labels)
    assert (sp.col < 7186).all()  # unseen columns are 0 on train
    # the unseen label annotated on a train image stays unknown
    assert release.train_images[-2] not in ids  # only a non-seen label
    assert release.train_images[-1] not in ids  # no annotation at all
    col = {lab.id: j for j, lab in enumerate(prepared.label_space.all)}
    dense0 = sp.to_dense([0])[0]
    assert dense0[col[release.notes["anole"]]] == 1
    assert dense0[col[release.unseen[0]]] == 0
    assert sp.to_dense([1])[0][col[release.seen[2]]] == 1  # conflicting duplicate → +1
    a, b = release.notes["dup_names"]
    assert sp.to_dense([3])[0][[col[a], col[b]]].tolist() == [1, -1]  # same name, separate cols
    meta = prepared.meta
    assert meta["sparse_splits"]["train"]["file"] == "train_sparse.npz"
    assert meta["counts"]["train"] == len(ids)
    assert meta["annotations"]["train_rows_on_unseen_400"] == 1
    assert meta["annotations"]["train_conflicting_duplicates"] == 1
    assert meta["images"]["train_without_seen_annotation"] == 2


@needs_descriptions
def test_dense_and_auto_storage(
    release: rf.OIRelease, prepared: SparsePreparedDataset, tmp_path: Path
) -> None:
    dense = open_images.prepare(release.root, tmp_path / "dense", sparse_train=False)
    loaded = PreparedDataset.load(tmp_path / "dense")
    np.testing.assert_array_equal(
        loaded.splits["train"].labels, prepared.sparse_splits["train"].to_dense()
    )
    assert not sparse_path(tmp_path / "dense", "train").exists()
    assert dense.meta["conventions"]["train_storage"] == "dense"
    auto = open_images.prepare(release.root, tmp_path / "auto")  # small → dense
    assert "train" in auto.splits
    auto = open_images.prepare(release.root, tmp_path / "auto2", dense_limit_bytes=1000)
    assert "train" not in auto.splits and "train" in auto.sparse_splits
    assert load_sparse_split(tmp_path / "auto2", "train") is not None
    # the plain contract loader reads the sparse train split as a Split whose labels are the
    # SparseLabels (rows made dense on access), the test split dense
    plain = PreparedDataset.load(tmp_path / "auto2")
    assert set(plain.splits) == {"train", "test"}
    assert isinstance(plain.splits["train"].labels, SparseLabels)
    assert isinstance(plain.splits["test"].labels, np.ndarray)
    np.testing.assert_array_equal(
        plain.splits["train"].labels[[2, 0]], auto.sparse_splits["train"].to_dense([2, 0])
    )


@needs_descriptions
def test_manifest(release: rf.OIRelease, prepared: SparsePreparedDataset) -> None:
    man = prepared.manifest
    assert man.columns == ["image_id", "url", "md5", "split"]
    train_ids = prepared.sparse_splits["train"].image_ids.tolist()
    test_ids = prepared.splits["test"].image_ids.tolist()
    assert man["image_id"].to_list() == train_ids + test_ids
    assert man["split"].to_list() == ["train"] * len(train_ids) + ["test"] * len(test_ids)
    k = release.test_images.index(test_ids[0])
    row = man.filter(pl.col("image_id") == test_ids[0]).row(0, named=True)
    assert row["url"] == f"https://c{k % 9}.staticflickr.com/1/{k}/{test_ids[0]}_o.jpg"
    assert row["md5"] == f"md5{k:05d}base64=="


@needs_descriptions
def test_no_positive_counts_and_drop(
    release: rf.OIRelease, prepared: SparsePreparedDataset, tmp_path: Path
) -> None:
    _, labels = expected(release, "test")
    n_seen = 7186
    no_unseen = int((~(labels[:, n_seen:] == 1).any(axis=1)).sum())
    assert prepared.meta["test_without_positive"]["unseen"] == no_unseen
    ds = open_images.prepare(release.root, tmp_path / "o", drop_test_no_positive="unseen")
    assert len(ds.splits["test"].image_ids) == labels.shape[0] - no_unseen
    assert (ds.splits["test"].labels[:, n_seen:] == 1).any(axis=1).all()


@needs_descriptions
def test_missing_images(release: rf.OIRelease, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    (imgs / "test").mkdir(parents=True)
    (imgs / f"{release.train_images[0]}.jpg").write_bytes(b"jpeg")
    (imgs / "test" / f"{release.test_images[0]}.jpg").write_bytes(b"jpeg")
    ds = open_images.prepare(release.root, tmp_path / "o", images_dir=imgs, drop_missing=True)
    assert ds.sparse_splits.get("train", None) is None  # small: dense
    assert ds.splits["train"].image_ids.tolist() == [release.train_images[0]]
    assert ds.splits["test"].image_ids.tolist() == [release.test_images[0]]
    assert ds.meta["missing_images"]["test"] == len(expected(release, "test")[0]) - 1


# --------------------------------------------------------------------------- the 400 unseen


@needs_descriptions
def test_reference_selection_verified_against_release(fresh: rf.OIRelease, tmp_path: Path) -> None:
    gone = fresh.unseen[7]
    p = fresh.ann_file("test")
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(ln for ln in lines if gone.encode() + b"," not in ln))
    with pytest.raises(ParseError) as info:
        open_images.prepare(fresh.root, tmp_path / "out")
    msg = str(info.value)
    assert "test-annotations-human-imagelabels.csv" in msg and gone in msg
    assert "top_400_unseen.csv line 8" in msg
    assert not (tmp_path / "out").exists()


@needs_descriptions
def test_unseen_label_listed_as_trainable_is_an_error(fresh: rf.OIRelease, tmp_path: Path) -> None:
    p = fresh.root / "classes-trainable.txt"
    p.write_bytes(p.read_bytes() + fresh.unseen[0].encode() + b"\n")
    with pytest.raises(ParseError, match="classes-trainable.txt"):
        open_images.prepare(fresh.root, tmp_path / "out", check_reference=False)
    assert not (tmp_path / "out").exists()


@needs_descriptions
def test_derive_reproduces_reference_on_frequency_fixture(tmp_path: Path) -> None:
    rel = rf.build_open_images(tmp_path / "r", derive_counts=True, n_train=4)
    derived = open_images.prepare(rel.root, tmp_path / "d", unseen_selection="derive")
    assert [lab.id for lab in derived.label_space.unseen] == reference.oi_unseen_400()
    ref = open_images.prepare(rel.root, tmp_path / "r2")
    check = ref.meta["unseen_selection"]["derivation_check"]
    assert check["rank_by_annotated"] == {
        "equals_reference_order": True,
        "equals_reference_set": True,
        "overlap_with_reference": 400,
    }
    assert check["rank_by_positive"]["equals_reference_order"] is False  # counts differ
    assert check["n_candidates_in_release"] == 405
    assert ref.meta["unseen_selection"]["min_test_images_annotated"] == 3
    np.testing.assert_array_equal(derived.splits["test"].labels, ref.splits["test"].labels)


@needs_descriptions
@pytest.mark.parametrize("rank_by", ["annotated", "positive"])
def test_derive_rule(release: rf.OIRelease, tmp_path: Path, rank_by: str) -> None:
    seen = set(release.seen)
    imgs: dict[str, set[str]] = {}
    for img, mid, conf in release.test_ann:
        if mid not in seen and (rank_by == "annotated" or conf == "1"):
            imgs.setdefault(mid, set()).add(img)
    want = sorted(imgs, key=lambda m: (-len(imgs[m]), m))[:5]
    ds = open_images.prepare(
        release.root, tmp_path / "o", unseen_selection="derive", n_unseen=5, rank_by=rank_by
    )
    assert [lab.id for lab in ds.label_space.unseen] == want
    assert ds.splits["test"].labels.shape[1] == 7186 + 5


@needs_descriptions
def test_derive_needs_enough_candidates(release: rf.OIRelease, tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot select 5000 unseen labels"):
        open_images.prepare(release.root, tmp_path / "o", unseen_selection="derive", n_unseen=5000)


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unseen_selection"):
        open_images.prepare(tmp_path, tmp_path / "o", unseen_selection="top")
    with pytest.raises(ValueError, match="rank_by"):
        open_images.prepare(tmp_path, tmp_path / "o", rank_by="count")
    with pytest.raises(ValueError, match="n_unseen"):
        open_images.prepare(tmp_path, tmp_path / "o", n_unseen=10)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- quirks


@needs_descriptions
def test_lf_no_bom_flat_layout(tmp_path: Path) -> None:
    rel = rf.build_open_images(tmp_path / "r", crlf=False, bom=False, n_test=10, n_train=5)
    for split in ("train", "test"):  # flat layout: everything in the release root
        for p in (rel.root / split).iterdir():
            p.rename(rel.root / p.name)
    ds = open_images.prepare(rel.root, tmp_path / "o", sparse_train=True)
    ids, labels = expected(rel, "test")
    np.testing.assert_array_equal(ds.splits["test"].labels, labels)
    np.testing.assert_array_equal(ds.sparse_splits["train"].to_dense(), expected(rel, "train")[1])


# --------------------------------------------------------------------------- malformed input


def _line_of(path: Path, needle: str, nth: int = 0) -> int:
    hits = [
        i
        for i, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1)
        if needle in ln
    ]
    return hits[nth]


def _ann_truncated_row(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.ann_file("train")
    rf.replace_line(p, 5, p.read_text(encoding="utf-8-sig").splitlines()[4].rsplit(",", 1)[0])
    return p.name, 5


def _ann_extra_field(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.ann_file("test")
    rf.replace_line(p, 7, p.read_text(encoding="utf-8-sig").splitlines()[6] + ",extra")
    return p.name, 7


def _ann_confidence(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.ann_file("test")
    rf.replace_line(p, 9, p.read_text(encoding="utf-8-sig").splitlines()[8][:-1] + "0.5")
    return p.name, 9


def _ann_unknown_label(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.ann_file("train")
    rf.replace_line(p, 3, f"{rel.train_images[0]},verification,/m/notaclass,1")
    return p.name, 3


def _ann_unknown_image(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.ann_file("test")
    rf.replace_line(p, 4, f"0123456789abcdef,verification,{rel.seen[0]},1")
    return p.name, 4


def _ann_empty_line(rel: rf.OIRelease) -> tuple[str, int]:
    rf.replace_line(rel.ann_file("train"), 6, "")
    return rel.ann_file("train").name, 6


def _ann_bad_header(rel: rf.OIRelease) -> tuple[str, int]:
    rf.replace_line(rel.ann_file("test"), 1, "ImageID,Source,LabelName")
    return rel.ann_file("test").name, 1


def _images_wrong_columns(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.images_file("test")
    rf.replace_line(p, 6, rf.csv_line(rf._image_row(rel.test_images[4], "test", 4)[:-2]))
    return p.name, 6


def _images_truncated(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.images_file("train")
    rf.truncate_lines(p, 4)  # train images 3.. are annotated but no longer listed
    return rel.ann_file("train").name, _line_of(rel.ann_file("train"), rel.train_images[3])


def _images_duplicate(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.images_file("test")
    rf.replace_line(p, 5, rf.csv_line(rf._image_row(rel.test_images[0], "test", 0)))
    return p.name, 5


def _descriptions_bad_row(rel: rf.OIRelease) -> tuple[str, int]:
    rf.replace_line(rel.root / "class-descriptions.csv", 100, "/m/xyz,Name,extra")
    return "class-descriptions.csv", 100


def _descriptions_duplicate(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.root / "class-descriptions.csv"
    first = p.read_bytes().splitlines()[0].decode()
    rf.replace_line(p, 50, first)
    return "class-descriptions.csv", 50


def _trainable_unknown(rel: rf.OIRelease) -> tuple[str, int]:
    rf.replace_line(rel.root / "classes-trainable.txt", 20, "/m/notaclass")
    return "classes-trainable.txt", 20


def _trainable_not_standard(rel: rf.OIRelease) -> tuple[str, int]:
    p = rel.root / "classes-trainable.txt"
    rf.truncate_lines(p, 7000)
    return "classes-trainable.txt", 7001


CORRUPTIONS = [
    _ann_truncated_row,
    _ann_extra_field,
    _ann_confidence,
    _ann_unknown_label,
    _ann_unknown_image,
    _ann_empty_line,
    _ann_bad_header,
    _images_wrong_columns,
    _images_truncated,
    _images_duplicate,
    _descriptions_bad_row,
    _descriptions_duplicate,
    _trainable_unknown,
    _trainable_not_standard,
]


@needs_descriptions
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[1:])
def test_malformed_input(fresh: rf.OIRelease, tmp_path: Path, corrupt) -> None:
    fname, line = corrupt(fresh)
    out = tmp_path / "out"
    with pytest.raises(ParseError) as info:
        open_images.prepare(fresh.root, out, sparse_train=True)
    err = info.value
    assert Path(err.file).name == fname, str(err)
    assert err.line == line, str(err)
    assert f"{fname}:{line}: " in str(err) and " — " in str(err)
    assert not out.exists()


@needs_descriptions
def test_missing_required_file(fresh: rf.OIRelease, tmp_path: Path) -> None:
    fresh.ann_file("train").unlink()
    with pytest.raises(ParseError, match="train-annotations-human-imagelabels.csv not found"):
        open_images.prepare(fresh.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- sparse helper


def _random_sparse(seed: int = 0, n: int = 50, c: int = 30) -> tuple[SparseLabels, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.choice(np.array([-1, 0, 0, 0, 1], dtype=np.int8), size=(n, c))
    dense[7] = 0  # an empty row
    ids = np.array([f"img{i}" for i in range(n)])
    return SparseLabels.from_dense(Split(ids, dense)), dense


def test_sparse_to_dense_batches() -> None:
    sp, dense = _random_sparse()
    np.testing.assert_array_equal(sp.to_dense(), dense)
    for rows in ([3, 1, 7, 49], [7], [], np.arange(10, 20), [5, 5]):
        np.testing.assert_array_equal(sp.to_dense(rows), dense[np.asarray(rows, dtype=int)])
    np.testing.assert_array_equal(sp.to_dense(slice(10, 30, 3)), dense[10:30:3])
    assert sp.to_dense([1]).dtype == np.int8
    assert sp.nnz == int((dense != 0).sum())


def test_sparse_labels_index_like_the_dense_matrix() -> None:
    """What the trainer and cells do with train labels: rows, (rows, cols), masks, take."""
    sp, dense = _random_sparse(3)
    assert len(sp) == len(dense) and sp.shape == dense.shape and sp.dtype == dense.dtype
    rows = np.array([4, 7, 4, 0])
    np.testing.assert_array_equal(sp[rows], dense[rows])
    np.testing.assert_array_equal(sp[rows, :12], dense[rows, :12])
    np.testing.assert_array_equal(sp[3], dense[3])
    np.testing.assert_array_equal(sp[5:20:4, 3:], dense[5:20:4, 3:])
    mask = np.random.default_rng(0).random(len(dense)) < 0.5
    np.testing.assert_array_equal(sp[mask], dense[mask])
    sub = sp.take(mask)
    assert isinstance(sub, SparseLabels)
    np.testing.assert_array_equal(sub.to_dense(), dense[mask])
    assert sub.image_ids.tolist() == sp.image_ids[mask].tolist()
    np.testing.assert_array_equal(sp.take(rows).to_dense(), dense[rows])
    with pytest.raises(IndexError):
        sp[np.ones(3, dtype=bool)]


def test_sparse_save_load_roundtrip(tmp_path: Path) -> None:
    sp, dense = _random_sparse(1)
    sp.save(tmp_path / "x_sparse.npz")
    again = SparseLabels.load(tmp_path / "x_sparse.npz")
    np.testing.assert_array_equal(again.to_dense(), dense)
    assert again.image_ids.tolist() == sp.image_ids.tolist()
    assert (
        again.row.dtype == np.int32 and again.col.dtype == np.int32 and again.value.dtype == np.int8
    )


def test_sparse_from_coo_merges_duplicates() -> None:
    sp = SparseLabels.from_coo(
        np.array(["a", "b", "c"]),
        row=[2, 0, 2, 0, 1, 1],
        col=[1, 3, 1, 3, 0, 2],
        value=np.array([-1, -1, 1, -1, 0, 1], dtype=np.int8),
        n_labels=4,
    )
    assert sp.to_dense().tolist() == [[0, 0, 0, -1], [0, 0, 1, 0], [0, 1, 0, 0]]
    assert sp.nnz == 3  # zero dropped, duplicates merged (positive wins)


def test_sparse_validation() -> None:
    ids = np.array(["a", "b"])
    with pytest.raises(ValueError, match="sorted"):
        SparseLabels(ids, [1, 0], [0, 0], np.array([1, 1], dtype=np.int8), 3)
    with pytest.raises(ValueError, match="out of range"):
        SparseLabels(ids, [0, 5], [0, 0], np.array([1, 1], dtype=np.int8), 3)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        SparseLabels(ids, [0], [0], np.array([0], dtype=np.int8), 3)
    with pytest.raises(TypeError, match="int8"):
        SparseLabels(ids, [0], [0], np.array([1]), 3)


def test_sparse_prepared_dataset_roundtrip(tmp_path: Path) -> None:
    from pipelines.data.prepared import Label, LabelSpace

    sp, dense = _random_sparse(2, n=20, c=5)
    space = LabelSpace(
        [Label(str(i), f"n{i}") for i in range(3)], [Label("u0", "u"), Label("u1", "u")]
    )
    test = Split(np.array(["t0", "t1"]), np.zeros((2, 5), dtype=np.int8))
    ds = SparsePreparedDataset(
        "toy", space, {"test": test}, None, {"k": 1}, sparse_splits={"train": sp}
    )
    ds.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        ".ovml-prepared.json",  # which files are the prepare's own (issue 8)
        "labels.json",
        "meta.json",
        "test.npz",
        "train_sparse.npz",
    ]
    back = SparsePreparedDataset.load(tmp_path / "p")
    np.testing.assert_array_equal(back.split_labels("train"), dense)
    np.testing.assert_array_equal(back.split_labels("train", [3, 4]), dense[[3, 4]])
    assert back.split_image_ids("test").tolist() == ["t0", "t1"]
    assert back.meta["counts"] == {"test": 2, "train": 20} and back.meta["k"] == 1
    bad = SparsePreparedDataset("toy", space, {"test": test}, sparse_splits={"test": sp})
    with pytest.raises(ValueError):
        bad.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_sparse_split_survives_dead_link_filtering(tmp_path: Path) -> None:
    """Cells keep only images with features; a sparse train split stays sparse doing so."""
    from pipelines.cells import _restrict_to_featurised
    from pipelines.data.prepared import Label, LabelSpace, PreparedDataset
    from pipelines.io import write_json

    sp, dense = _random_sparse(4, n=12, c=5)
    space = LabelSpace(
        [Label(str(i), f"n{i}") for i in range(3)], [Label("u0", "u"), Label("u1", "u")]
    )
    test = Split(np.array(["t0", "t1"]), np.zeros((2, 5), dtype=np.int8))
    PreparedDataset("x", space, {"train": Split(sp.image_ids, sp), "test": test}).save(
        tmp_path / "ds"
    )
    ds = PreparedDataset.load(tmp_path / "ds")
    keep = [1, 4, 5, 11]
    write_json(
        tmp_path / "feat" / "train" / "index.json",
        {"image_ids": [f"img{i}" for i in keep]},
    )
    out = _restrict_to_featurised(ds, tmp_path / "feat")
    labels = out.splits["train"].labels
    assert isinstance(labels, SparseLabels)
    np.testing.assert_array_equal(labels[np.arange(4)], dense[keep])
    assert out.splits["train"].image_ids.tolist() == [f"img{i}" for i in keep]
    assert out.splits["test"] is ds.splits["test"]
