"""NUS-WIDE parser, shared parsing helpers and reference-list loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.data import nus_wide, reference
from pipelines.data.prepared import PreparedDataset
from pipelines.data.splits import ParseError, read_lines, read_list

try:
    from tests import release_fixtures as rf
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import release_fixtures as rf


SHARED = reference.REPO_ROOT.parent / "shared" / "data"


def _shared_or_packaged(name: str) -> list[str]:
    p = SHARED / name
    return read_list(p, "entry") if p.is_file() else reference.load_list(name)


def expected_labels(rel: rf.NusRelease, split: str) -> tuple[list[str], np.ndarray]:
    seen = [t for t in rel.tags if t not in set(rel.concepts)]
    ids, rows = [], []
    for im in rel.images:
        if im.split != split:
            continue
        s = [1 if t in im.tags else -1 for t in seen]
        u = (
            [0] * len(rel.concepts)
            if split == "train"
            else [1 if c in im.concepts else -1 for c in rel.concepts]
        )
        ids.append(im.path)
        rows.append(s + u)
    return ids, np.asarray(rows, dtype=np.int8)


@pytest.fixture()
def release(tmp_path: Path) -> rf.NusRelease:
    return rf.build_nus_wide(tmp_path / "release")


@pytest.fixture()
def prepared(release: rf.NusRelease, tmp_path: Path) -> PreparedDataset:
    nus_wide.prepare(release.root, tmp_path / "out")
    return PreparedDataset.load(tmp_path / "out")


# --------------------------------------------------------------------------- label space


def test_seen_unseen_equal_reference_lists(prepared: PreparedDataset) -> None:
    seen = [lab.id for lab in prepared.label_space.seen]
    unseen = [lab.id for lab in prepared.label_space.unseen]
    assert seen == _shared_or_packaged("nus-wide/seen_925.txt")
    assert unseen == _shared_or_packaged("nus-wide/unseen_81.txt")
    assert len(seen) == 925 and len(unseen) == 81
    assert all(lab.id == lab.name for lab in prepared.label_space.all)
    # 6 concepts are not tags at all; 75 are tags and must not be seen labels
    assert {"computer", "fire", "map", "swimmers", "tattoo", "whales"} <= set(unseen)
    assert not set(seen) & set(unseen)


# --------------------------------------------------------------------------- labels / splits


def test_labels_exact(release: rf.NusRelease, prepared: PreparedDataset) -> None:
    for split in ("train", "test"):
        ids, labels = expected_labels(release, split)
        assert prepared.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(prepared.splits[split].labels, labels)
        assert prepared.splits[split].labels.dtype == np.int8


def test_label_cells(prepared: PreparedDataset) -> None:
    names = prepared.label_space.names()
    col = {n: i for i, n in enumerate(names)}
    n_seen = prepared.label_space.n_seen
    test = prepared.splits["test"]
    r = test.image_ids.tolist().index("actor/0002_174174086.jpg")
    assert test.labels[r, col["blue"]] == 1  # tag present
    assert test.labels[r, col["nature"]] == -1  # tag absent
    assert col["water"] >= n_seen  # 'water' is a tag AND a concept → unseen only
    assert test.labels[r, col["water"]] == 1  # from the ground truth
    assert test.labels[r, col["computer"]] == 1  # concept that is no tag
    assert test.labels[r, col["sky"]] == -1
    train = prepared.splits["train"]
    r = train.image_ids.tolist().index("actor/0001_2124494179.jpg")
    assert train.labels[r, col["sky"]] == 0  # unseen on train: unknown even if GT says 1
    assert (train.labels[:, n_seen:] == 0).all()
    assert train.labels[r, col["nature"]] == 1 and train.labels[r, col["red"]] == -1
    # 'zebra' tag on a test image counts for the unseen 'zebra' column only via the GT
    r = test.image_ids.tolist().index("zebra/0007_5555.jpg")
    assert test.labels[r, col["zebra"]] == 1 and test.labels[r, col["animal"]] == 1


def test_split_order_and_unassigned(release: rf.NusRelease, prepared: PreparedDataset) -> None:
    assert prepared.splits["train"].image_ids.tolist() == [
        "actor/0001_2124494179.jpg",
        "airport/0003_1111.jpg",
        "beach/0005_3333.jpg",
    ]
    all_ids = {*prepared.splits["train"].image_ids, *prepared.splits["test"].image_ids}
    assert "beach/0006_4444.jpg" not in all_ids  # in Imagelist, in neither split
    assert prepared.meta["n_images_listed"] == 8
    assert prepared.meta["n_images_in_neither_split"] == 1
    assert prepared.meta["counts"] == {"train": 3, "test": 4}


def test_test_ids_flatten_to_biam_names(prepared: PreparedDataset) -> None:
    path = SHARED / "nus-wide/test_images_107859.txt"
    if not path.is_file():
        pytest.skip("shared/data not available")
    official = set(read_lines(path))
    flat = [i.replace("/", "_") for i in prepared.splits["test"].image_ids]
    assert "actor_0002_174174086.jpg" in flat and "actor_0002_174174086.jpg" in official
    assert "administrative_assistant_0002_258761806.jpg" in official


def test_no_positive_counts_and_default_keeps_all(prepared: PreparedDataset) -> None:
    m = prepared.meta
    # test images: actor/0002 (seen+unseen), airport/0004 (nothing), admin (seen only),
    # zebra (its tags animal/zebra are concepts → no seen positive, but GT positives)
    assert m["test_without_positive"] == {"seen": 2, "unseen": 2, "any": 1}
    assert m["train_without_positive"] == {"seen": 1}  # beach/0005 has no tag
    assert m["dropped"] == {"train": 0, "test": 0}
    assert m["conventions"]["drop_test_no_positive"] == "none"


@pytest.mark.parametrize(
    ("mode", "kept"),
    [
        ("unseen", ["actor/0002_174174086.jpg", "zebra/0007_5555.jpg"]),
        (
            "any",
            [
                "actor/0002_174174086.jpg",
                "administrative_assistant/0002_258761806.jpg",
                "zebra/0007_5555.jpg",
            ],
        ),
    ],
)
def test_drop_test_no_positive(
    release: rf.NusRelease, tmp_path: Path, mode: str, kept: list[str]
) -> None:
    ds = nus_wide.prepare(release.root, tmp_path / "o", drop_test_no_positive=mode)
    assert ds.splits["test"].image_ids.tolist() == kept
    assert ds.meta["dropped"]["test"] == 4 - len(kept)
    assert set(ds.manifest.filter(pl.col("split") == "test")["image_id"]) == set(kept)


def test_drop_train_no_positive(release: rf.NusRelease, tmp_path: Path) -> None:
    ds = nus_wide.prepare(release.root, tmp_path / "o", drop_train_no_positive=True)
    assert "beach/0005_3333.jpg" not in ds.splits["train"].image_ids.tolist()
    assert len(ds.splits["train"].image_ids) == 2


def test_bad_options(release: rf.NusRelease, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="drop_test_no_positive"):
        nus_wide.prepare(release.root, tmp_path / "o", drop_test_no_positive="all")
    with pytest.raises(ValueError, match="images_dir"):
        nus_wide.prepare(release.root, tmp_path / "o", drop_missing=True)
    with pytest.raises(ValueError, match="url_preference"):
        nus_wide.prepare(release.root, tmp_path / "o", url_preference=["URL_Huge"])
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- images on disk


def test_missing_images_counted_and_dropped(release: rf.NusRelease, tmp_path: Path) -> None:
    imgs = tmp_path / "images"
    (imgs / "actor").mkdir(parents=True)
    (imgs / "actor/0001_2124494179.jpg").write_bytes(b"\xff\xd8jpeg")  # nested layout
    (imgs / "zebra_0007_5555.jpg").write_bytes(b"\xff\xd8jpeg")  # flattened (BiAM) layout
    (imgs / "actor/0002_174174086.jpg").write_bytes(reference.flickr_placeholder() or b"")
    ds = nus_wide.prepare(release.root, tmp_path / "o", images_dir=imgs)
    assert ds.meta["missing_images"]["train"] == 2
    assert ds.meta["missing_images"]["test"] == 3  # placeholder counts as missing
    assert ds.meta["dropped"] == {"train": 0, "test": 0}
    ds = nus_wide.prepare(release.root, tmp_path / "o2", images_dir=imgs, drop_missing=True)
    assert ds.splits["train"].image_ids.tolist() == ["actor/0001_2124494179.jpg"]
    assert ds.splits["test"].image_ids.tolist() == ["zebra/0007_5555.jpg"]
    assert ds.manifest.height == 2


# --------------------------------------------------------------------------- manifest


def test_manifest_urls(prepared: PreparedDataset) -> None:
    man = prepared.manifest
    assert man.columns == ["image_id", "url", "md5", "split"]
    assert man["md5"].null_count() == man.height
    url = dict(zip(man["image_id"], man["url"], strict=True))
    assert url["actor/0001_2124494179.jpg"].endswith("1001_abc_b.jpg")  # Large
    assert url["airport/0003_1111.jpg"].endswith("1003_abc_m.jpg")  # no Large → Middle
    assert url["airport/0004_2222.jpg"].endswith("1004_abc_t.jpg")  # only Small
    assert (
        man.filter(pl.col("split") == "train")["image_id"].to_list()
        == prepared.splits["train"].image_ids.tolist()
    )
    assert prepared.meta["urls"]["field_used"]["URL_Small"] == 1


def test_url_preference_option(release: rf.NusRelease, tmp_path: Path) -> None:
    ds = nus_wide.prepare(release.root, tmp_path / "o", url_preference=["URL_Middle", "URL_Small"])
    url = dict(zip(ds.manifest["image_id"], ds.manifest["url"], strict=True))
    assert url["actor/0001_2124494179.jpg"].endswith("_m.jpg")


def test_without_url_file(tmp_path: Path) -> None:
    rel = rf.build_nus_wide(tmp_path / "r", with_urls=False)
    ds = nus_wide.prepare(rel.root, tmp_path / "o")
    assert ds.manifest["url"].null_count() == ds.manifest.height
    assert ds.meta["urls"]["file"] is None


# --------------------------------------------------------------------------- quirks


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crlf": False, "bom": False, "tag_sep": " "},
        {"crlf": True, "bom": True, "tag_sep": "\t"},
        {"crlf": False, "bom": True, "tag_sep": " \t", "url_prefix": ""},
    ],
)
def test_line_ending_bom_separator_quirks(tmp_path: Path, kwargs: dict) -> None:
    rel = rf.build_nus_wide(tmp_path / "r", **kwargs)
    ds = nus_wide.prepare(rel.root, tmp_path / "o")
    for split in ("train", "test"):
        ids, labels = expected_labels(rel, split)
        assert ds.splits[split].image_ids.tolist() == ids
        np.testing.assert_array_equal(ds.splits[split].labels, labels)
    assert ds.manifest["url"].null_count() == 0


def test_no_final_newline_and_trailing_blank_lines(release: rf.NusRelease, tmp_path: Path) -> None:
    p = release.root / "NUS_WID_Tags/AllTags1k.txt"
    p.write_bytes(p.read_bytes().rstrip(b"\r\n"))
    g = release.root / "Groundtruth/AllLabels/Labels_zebra.txt"
    g.write_bytes(g.read_bytes() + b"\r\n\r\n")
    ds = nus_wide.prepare(release.root, tmp_path / "o")
    np.testing.assert_array_equal(ds.splits["test"].labels, expected_labels(release, "test")[1])


def test_lowercase_directory_names(release: rf.NusRelease, tmp_path: Path) -> None:
    (release.root / "ImageList").rename(release.root / "imagelist")
    ds = nus_wide.prepare(release.root, tmp_path / "o")
    assert len(ds.splits["test"].image_ids) == 4


def test_imagelist_with_drive_prefix(release: rf.NusRelease, tmp_path: Path) -> None:
    p = release.root / "ImageList/Imagelist.txt"
    lines = read_lines(p)
    rf.write_lines(p, ["C:\\ImageData\\Flickr\\" + ln for ln in lines], crlf=True)
    ds = nus_wide.prepare(release.root, tmp_path / "o")
    assert ds.splits["train"].image_ids[0] == "actor/0001_2124494179.jpg"


# --------------------------------------------------------------------------- malformed input


def _corrupt_alltags_short_row(root: Path) -> tuple[str, int]:
    p = root / "NUS_WID_Tags/AllTags1k.txt"
    line = read_lines(p)[2]
    rf.replace_line(p, 3, line.rsplit("\t", 2)[0])
    return "AllTags1k.txt", 3


def _corrupt_alltags_value(root: Path) -> tuple[str, int]:
    p = root / "NUS_WID_Tags/AllTags1k.txt"
    line = read_lines(p)[4]
    rf.replace_line(p, 5, "2" + line[1:])
    return "AllTags1k.txt", 5


def _corrupt_alltags_truncated(root: Path) -> tuple[str, int]:
    rf.truncate_lines(root / "NUS_WID_Tags/AllTags1k.txt", 6)
    return "AllTags1k.txt", 7


def _corrupt_alltags_extra_row(root: Path) -> tuple[str, int]:
    p = root / "NUS_WID_Tags/AllTags1k.txt"
    p.write_bytes(p.read_bytes() + read_lines(p)[0].encode() + b"\r\n")
    return "AllTags1k.txt", 9


def _corrupt_alltags_blank_line(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "NUS_WID_Tags/AllTags1k.txt", 4, "")
    return "AllTags1k.txt", 4


def _corrupt_groundtruth_truncated(root: Path) -> tuple[str, int]:
    rf.truncate_lines(root / "Groundtruth/AllLabels/Labels_airport.txt", 5)
    return "Labels_airport.txt", 6


def _corrupt_groundtruth_value(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "Groundtruth/AllLabels/Labels_beach.txt", 2, "-1")
    return "Labels_beach.txt", 2


def _corrupt_groundtruth_missing(root: Path) -> tuple[str, int]:
    (root / "Groundtruth/AllLabels/Labels_zebra.txt").unlink()
    return "Concepts81.txt", 81


def _corrupt_groundtruth_unknown_label(root: Path) -> tuple[str, None]:
    rf.write_lines(root / "Groundtruth/AllLabels/Labels_unicorn.txt", ["0"] * 8)
    return "Labels_unicorn.txt", None


def _corrupt_train_list_unknown_image(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "ImageList/TrainImagelist.txt", 2, "actor\\9999_0.jpg")
    return "TrainImagelist.txt", 2


def _corrupt_test_list_overlaps_train(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "ImageList/TestImagelist.txt", 3, "actor\\0001_2124494179.jpg")
    return "TestImagelist.txt", 3


def _corrupt_imagelist_duplicate(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "ImageList/Imagelist.txt", 7, "actor\\0001_2124494179.jpg")
    return "Imagelist.txt", 7


def _corrupt_urls_columns(root: Path) -> tuple[str, int]:
    p = root / "NUS-WIDE-urls.txt"
    rf.replace_line(p, 4, read_lines(p)[3] + " extra")
    return "NUS-WIDE-urls.txt", 4


def _corrupt_taglist_renamed(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "NUS_WID_Tags/TagList1k.txt", 10, "notatag")
    return "TagList1k.txt", 10


def _corrupt_concepts_duplicate(root: Path) -> tuple[str, int]:
    rf.replace_line(root / "ConceptsList/Concepts81.txt", 3, "airport")
    return "Concepts81.txt", 3


CORRUPTIONS = [
    _corrupt_alltags_short_row,
    _corrupt_alltags_value,
    _corrupt_alltags_truncated,
    _corrupt_alltags_extra_row,
    _corrupt_alltags_blank_line,
    _corrupt_groundtruth_truncated,
    _corrupt_groundtruth_value,
    _corrupt_groundtruth_missing,
    _corrupt_groundtruth_unknown_label,
    _corrupt_train_list_unknown_image,
    _corrupt_test_list_overlaps_train,
    _corrupt_imagelist_duplicate,
    _corrupt_urls_columns,
    _corrupt_taglist_renamed,
    _corrupt_concepts_duplicate,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[9:])
def test_malformed_input(release: rf.NusRelease, tmp_path: Path, corrupt) -> None:
    fname, line = corrupt(release.root)
    out = tmp_path / "out"
    with pytest.raises(ParseError) as info:
        nus_wide.prepare(release.root, out)
    err = info.value
    msg = str(err)
    assert Path(err.file).name == fname
    assert fname in msg and " — " in msg
    if line is not None:
        assert err.line == line
        assert f"{fname}:{line}: " in msg
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))  # no temporary leftovers


def test_error_keeps_previous_output(release: rf.NusRelease, tmp_path: Path) -> None:
    out = tmp_path / "out"
    nus_wide.prepare(release.root, out)
    before = (out / "test.npz").read_bytes()
    _corrupt_alltags_value(release.root)
    with pytest.raises(ParseError):
        nus_wide.prepare(release.root, out)
    assert (out / "test.npz").read_bytes() == before


def test_missing_file(release: rf.NusRelease, tmp_path: Path) -> None:
    (release.root / "NUS_WID_Tags/AllTags1k.txt").unlink()
    with pytest.raises(ParseError, match="AllTags1k.txt not found"):
        nus_wide.prepare(release.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_check_reference_off_allows_custom_lists(release: rf.NusRelease, tmp_path: Path) -> None:
    rf.replace_line(release.root / "NUS_WID_Tags/TagList1k.txt", 10, "notatag")
    ds = nus_wide.prepare(release.root, tmp_path / "o", check_reference=False)
    assert "notatag" in [lab.id for lab in ds.label_space.seen]


def test_meta_json_written(release: rf.NusRelease, tmp_path: Path) -> None:
    nus_wide.prepare(release.root, tmp_path / "o")
    meta = json.loads((tmp_path / "o/meta.json").read_text())
    assert meta["n_seen"] == 925 and meta["n_unseen"] == 81
    assert meta["sources"]["alltags"]["path"] == "NUS_WID_Tags/AllTags1k.txt"


# --------------------------------------------------------------------------- helpers / reference


def test_parse_error_format_and_pickle() -> None:
    err = ParseError("a/b.txt", 12, "bad value", "fix it")
    assert str(err) == "a/b.txt:12: bad value — fix it"
    assert str(ParseError("a/b.txt", None, "missing", "fix it")) == "a/b.txt: missing — fix it"
    assert str(ParseError("x.json", "annotations[3]", "m", "h")) == "x.json:annotations[3]: m — h"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 12
    assert isinstance(err, ValueError)


def test_read_lines_quirks(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\nd\r\n\r\n")
    assert read_lines(p) == ["a", "b", "c", "d"]
    p.write_bytes(b"a\n\nb\n")
    with pytest.raises(ParseError, match=r"x.txt:2: empty line"):
        read_list(p, "tag")
    p.write_bytes(b"a\xff\nb\n")
    with pytest.raises(ParseError, match=r"x.txt:1: not valid UTF-8"):
        read_lines(p)


def test_image_key() -> None:
    assert nus_wide.image_key("actor\\0001_2.jpg") == "actor/0001_2.jpg"
    assert nus_wide.image_key("C:\\ImageData\\Flickr\\actor\\0001_2.jpg ") == "actor/0001_2.jpg"


PACKAGED = [
    "nus-wide/Concepts81.txt",
    "nus-wide/TagList1k.txt",
    "nus-wide/seen_925.txt",
    "nus-wide/unseen_81.txt",
    "nus-wide/flickr_unavailable_placeholder.jpg",
    "open-images-v4/classes-trainable.txt",
    "open-images-v4/unseen_labels_2594.txt",
    "open-images-v4/top_400_unseen.csv",
    "open-images-v4/unseen_400_mids.txt",
    "open-images-v4/unseen_400_names.txt",
    "coco/zsl_split_48_17.json",
]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_copies_match_shared(name: str) -> None:
    packaged = reference.PACKAGE_DIR / name
    assert packaged.is_file()
    shared = SHARED / name
    if not shared.is_file():
        pytest.skip("shared/data not available")
    norm = lambda b: b.replace(b"\r\n", b"\n")  # noqa: E731 — git may normalise line endings
    assert norm(packaged.read_bytes()) == norm(shared.read_bytes())


def test_package_copy_is_small() -> None:
    """The real datasets' reference lists stay small (iconworld's vocabulary file, a
    generated world's, has its own bound)."""
    files = [p for p in reference.PACKAGE_DIR.rglob("*") if p.is_file()]
    real = [p for p in files if "iconworld" not in p.relative_to(reference.PACKAGE_DIR).parts]
    assert sum(p.stat().st_size for p in real) < 300_000
    assert sum(p.stat().st_size for p in files) - sum(p.stat().st_size for p in real) < 500_000


def test_reference_loaders() -> None:
    assert len(reference.nus_taglist1k()) == 1000
    assert len(reference.nus_concepts81()) == 81
    assert len(reference.oi_trainable()) == 7186
    assert len(reference.oi_unseen_candidates_2594()) == 2594
    unseen = reference.oi_unseen_400()
    assert len(unseen) == 400 and len(set(unseen)) == 400
    idx = [i for _, i in reference.oi_top400_indices()]
    assert idx[:3] == [991, 1039, 120]  # top_400_unseen.csv starts with a BOM
    split = reference.coco_zsl_split()
    assert len(split["seen"]) == 48 and len(split["unseen"]) == 17


def test_env_var_overrides_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nus-wide").mkdir()
    (tmp_path / "nus-wide/Concepts81.txt").write_text("a\r\nb\r\n")
    monkeypatch.setenv(reference.ENV_VAR, str(tmp_path))
    assert reference.shared_data_dir() == tmp_path
    assert reference.nus_concepts81() == ["a", "b"]
    # files absent from the override fall back to the packaged copy
    assert len(reference.nus_taglist1k()) == 1000
    monkeypatch.delenv(reference.ENV_VAR)
    assert len(reference.nus_concepts81()) == 81
    with pytest.raises(FileNotFoundError, match=reference.ENV_VAR):
        reference.reference_path("nope/missing.txt")
