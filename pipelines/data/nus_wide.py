"""NUS-WIDE → prepared dataset (925 seen tags + 81 unseen human-verified concepts).

Release layout read (as the NUS-WIDE authors ship it; path components match
case-insensitively)::

    ImageList/Imagelist.txt          all 269,648 images, Windows paths (actor\\0001_2124494179.jpg)
    ImageList/TrainImagelist.txt     161,789 train images
    ImageList/TestImagelist.txt      107,859 test images
    NUS_WID_Tags/TagList1k.txt       the 1,000 tags (column order of AllTags1k)
    NUS_WID_Tags/AllTags1k.txt       one row per Imagelist image: 1,000 space/tab-separated 0/1
    ConceptsList/Concepts81.txt      the 81 concepts
    Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 per line, Imagelist order
    NUS-WIDE-urls.txt                (optional) header + Photo_file Photo_id URL_Large URL_Middle
                                     URL_Small URL_Original; missing URLs are the literal "null"

Conventions (recorded in meta.json):

* Seen = the 925 tags of TagList1k that are not among the 81 concepts, TagList1k order; their
  labels come from the tag matrix AllTags1k. Unseen = the 81 concepts, Concepts81 order; their
  labels come from the human ground truth, never from the tags. Column order: 925 seen then
  81 unseen (BiAM, MKT, RCNn, QKS; LESA put the 81 first — a consumer can permute).
* Train rows (TrainImagelist order): seen ±1 from tags (present +1, absent -1), unseen 0.
  Test rows (TestImagelist order): seen ±1 from tags, unseen ±1 from the ground truth.
* image_id = the Imagelist path with '/' separators (``actor/0001_2124494179.jpg``). BiAM's
  test_img_names (shared/data/nus-wide/test_images_107859.txt) flatten it to
  ``actor_0001_2124494179.jpg``: ``image_id.replace("/", "_")``.
* ``label_set="concepts81"``: the standard multi-label setting (Epsilon Table 4, from LESA /
  BiAM): the 81 concepts are the only labels, all *seen*, ±1 from the ground truth on train
  and test rows alike (the tags are not read). Dataset entry ``nus-wide-81``.
* Nothing is dropped by default. Methods differ (RCNn/QKS/ZS-SDL drop test images without a
  positive label per task; BiAM/MKT keep them): meta.json counts images without a seen / an
  unseen / any positive, and ``drop_test_no_positive`` can apply a drop at preparation time.
* Manifest url: first non-null of ``url_preference`` (default URL_Large > URL_Middle >
  URL_Original > URL_Small). The reference repositories train on the authors' image dump, not
  on URLs; Large (≤1024 px) is the smallest Flickr size that is not below the 224-448 px model
  inputs (Middle is ≤240 px and Small ≤ 100 px), and Original is most often null or dead.
  md5 is null (the release publishes none).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.data import reference
from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.data.splits import (
    ParseError,
    check_drop_choice,
    find_dir,
    find_file,
    image_present,
    no_positive_masks,
    normalize_path,
    parse_01_column,
    parse_01_rows,
    read_lines,
    read_list,
    source_info,
)

NAME = "nus-wide"
LABEL_SETS = ("zsl", "concepts81")  # 925 seen + 81 unseen; or the 81 concepts, all seen
URL_FIELDS = ("URL_Large", "URL_Middle", "URL_Original", "URL_Small")
MANIFEST_SCHEMA = {"image_id": pl.Utf8, "url": pl.Utf8, "md5": pl.Utf8, "split": pl.Utf8}

IMAGELIST = ("ImageList/Imagelist.txt",)
TRAIN_LIST = ("ImageList/TrainImagelist.txt",)
TEST_LIST = ("ImageList/TestImagelist.txt",)
TAGLIST = ("NUS_WID_Tags/TagList1k.txt", "TagList1k.txt")
ALLTAGS = ("NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt")
CONCEPTS = ("ConceptsList/Concepts81.txt", "Concepts81.txt")
LABEL_DIRS = ("Groundtruth/AllLabels", "AllLabels")
URLS = ("NUS-WIDE-urls.txt", "NUS-WIDE-urls/NUS-WIDE-urls.txt")


def image_key(path: str) -> str:
    """Canonical image id of a release path: its last two components, '/'-separated.

    ``actor\\0001_2124494179.jpg`` and ``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``
    both give ``actor/0001_2124494179.jpg``.
    """
    parts = [p for p in normalize_path(path).split("/") if p]
    return "/".join(parts[-2:])


def prepare(
    release_dir: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    drop_train_no_positive: bool = False,
    url_preference: Sequence[str] = URL_FIELDS,
    check_reference: bool = True,
    label_set: str = "zsl",
) -> PreparedDataset:
    """Parse a NUS-WIDE release and save the prepared dataset to ``out_dir`` (atomically).

    Options:
        images_dir: directory of downloaded images (nested ``actor/0001_x.jpg`` or flattened
            ``actor_0001_x.jpg``); when given, images that are absent — or are Flickr's
            "photo unavailable" placeholder — are counted in meta.json.
        drop_missing: also drop those images from both splits (needs ``images_dir``).
        drop_test_no_positive: "none" (default, keep all 107,859), "unseen" (drop test images
            with no positive among the 81 — the ZSL convention of RCNn/QKS/ZS-SDL), or "any"
            (drop those with no positive at all — their GZSL convention).
        drop_train_no_positive: drop train images with no positive seen tag.
        url_preference: URL columns to try, in order, for the manifest url.
        check_reference: require the derived seen/unseen lists to equal the field's standard
            925/81 lists (shared/data/nus-wide); turn off only for a modified release.
        label_set: "zsl" (default: 925 seen tags + 81 unseen concepts) or "concepts81" (the
            81 concepts as the only, seen, labels with train ground truth: standard
            multi-label classification, Epsilon Table 4).
    """
    release_dir = Path(release_dir)
    ds = parse(
        release_dir,
        images_dir=images_dir,
        drop_missing=drop_missing,
        drop_test_no_positive=drop_test_no_positive,
        drop_train_no_positive=drop_train_no_positive,
        url_preference=url_preference,
        check_reference=check_reference,
        label_set=label_set,
    )
    ds.save(out_dir)
    return ds


def parse(
    release_dir: Path,
    *,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    drop_train_no_positive: bool = False,
    url_preference: Sequence[str] = URL_FIELDS,
    check_reference: bool = True,
    label_set: str = "zsl",
) -> PreparedDataset:
    """Everything :func:`prepare` does except writing."""
    check_drop_choice(drop_test_no_positive)
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {LABEL_SETS}, not {label_set!r}")
    standard = label_set == "concepts81"
    if standard and drop_test_no_positive == "unseen":
        raise ValueError(
            "label_set='concepts81' has no unseen labels: drop_test_no_positive "
            "can be 'none' or 'any'"
        )
    if drop_missing and images_dir is None:
        raise ValueError("drop_missing needs images_dir (where the downloaded images are)")
    bad_fields = [f for f in url_preference if f not in URL_FIELDS]
    if bad_fields or not url_preference:
        raise ValueError(f"url_preference must be a non-empty subset of {URL_FIELDS}")
    root = Path(release_dir)
    sources: dict[str, Any] = {}

    # ---------------------------------------------------------------- label lists
    tag_path = find_file(root, TAGLIST, "NUS_WID_Tags/TagList1k.txt")
    concept_path = find_file(root, CONCEPTS, "ConceptsList/Concepts81.txt")
    tags = read_list(tag_path, "tag")
    concepts = read_list(concept_path, "concept")
    concept_set = set(concepts)
    seen_cols = [i for i, t in enumerate(tags) if t not in concept_set]
    seen = [tags[i] for i in seen_cols]
    if check_reference:
        _check_against_reference(tag_path, tags, reference.nus_taglist1k(), "tag")
        _check_against_reference(concept_path, concepts, reference.nus_concepts81(), "concept")
        if seen != reference.nus_seen_925() or concepts != reference.nus_unseen_81():
            raise ParseError(tag_path, None, "seen/unseen lists differ from the standard 925/81")
    sources["taglist"] = source_info(tag_path, root)
    sources["concepts"] = source_info(concept_path, root)

    # ---------------------------------------------------------------- image lists
    all_path = find_file(root, IMAGELIST, "ImageList/Imagelist.txt")
    all_ids = _read_image_list(all_path)
    index: dict[str, int] = {}
    for lineno, img in enumerate(all_ids, start=1):
        if img in index:
            raise ParseError(
                all_path, lineno, f"image {img!r} listed twice (first on line {index[img] + 1})"
            )
        index[img] = lineno - 1
    n_all = len(all_ids)
    train_path = find_file(root, TRAIN_LIST, "ImageList/TrainImagelist.txt")
    test_path = find_file(root, TEST_LIST, "ImageList/TestImagelist.txt")
    train_rows = _subset_rows(train_path, index, all_path)
    test_rows = _subset_rows(test_path, index, all_path)
    overlap = set(train_rows.tolist()) & set(test_rows.tolist())
    if overlap:
        first = all_ids[min(overlap)]
        line = _read_image_list(test_path).index(first) + 1
        raise ParseError(test_path, line, f"image {first!r} is in both the train and test lists")
    for key, p in (("imagelist", all_path), ("train_list", train_path), ("test_list", test_path)):
        sources[key] = source_info(p, root)

    # ---------------------------------------------------------------- tags (seen labels)
    if standard:  # the 81 concepts only: no tag is a label
        seen_pm = np.zeros((n_all, 0), dtype=np.int8)
    else:
        alltags_path = find_file(root, ALLTAGS, "NUS_WID_Tags/AllTags1k.txt")
        tag_matrix = parse_01_rows(
            alltags_path, n_all, len(tags), what="tag", rows_source=all_path.name
        )
        seen_pm = tag_matrix[:, seen_cols].astype(np.int8) * 2 - 1
        del tag_matrix
        sources["alltags"] = source_info(alltags_path, root)

    # ---------------------------------------------------------------- ground truth (unseen)
    label_dir = find_dir(root, LABEL_DIRS)
    if label_dir is None:
        raise ParseError(
            root / LABEL_DIRS[0],
            None,
            "ground-truth directory Groundtruth/AllLabels not found",
            "extract Groundtruth.zip from the NUS-WIDE release into the release directory",
        )
    files = {}
    for p in sorted(label_dir.iterdir()):
        m = re.fullmatch(r"Labels_(.+)\.txt", p.name, flags=re.IGNORECASE)
        if m and p.is_file():
            files[m.group(1)] = p
    for concept, p in files.items():
        if concept not in concept_set:
            raise ParseError(
                p,
                None,
                f"ground truth for {concept!r}, which is not in {concept_path.name}",
                "remove the stray file, or restore the original ConceptsList/Concepts81.txt",
            )
    unseen_pm = np.empty((n_all, len(concepts)), dtype=np.int8)
    for j, concept in enumerate(concepts):
        p = files.get(concept)
        if p is None:
            raise ParseError(
                concept_path,
                j + 1,
                f"concept {concept!r} has no {label_dir.relative_to(root).as_posix()}/Labels_{concept}.txt",
                "extract Groundtruth.zip completely into the release directory",
            )
        unseen_pm[:, j] = parse_01_column(p, n_all, rows_source=all_path.name).astype(np.int8)
    unseen_pm = unseen_pm * 2 - 1
    sources["groundtruth_dir"] = label_dir.relative_to(root).as_posix()

    # ---------------------------------------------------------------- URLs
    url_path = find_file(root, URLS, "NUS-WIDE-urls.txt", required=False)
    urls: list[str | None] = [None] * n_all
    url_stats: dict[str, Any] = {"file": None}
    if url_path is not None:
        urls, url_stats = _read_urls(url_path, index, url_preference)
        sources["urls"] = source_info(url_path, root)

    # ---------------------------------------------------------------- assemble
    if standard:  # the 81 concepts become the seen block, known on train rows too
        seen, seen_pm, unseen_pm, concepts = concepts, unseen_pm, seen_pm, []
        train_unseen = unseen_pm[train_rows]
    else:
        train_unseen = np.zeros((len(train_rows), len(concepts)), dtype=np.int8)
    n_seen = len(seen)
    train_labels = np.concatenate([seen_pm[train_rows], train_unseen], axis=1)
    test_labels = np.concatenate([seen_pm[test_rows], unseen_pm[test_rows]], axis=1)
    del seen_pm, unseen_pm

    meta: dict[str, Any] = {
        "release": str(root),
        "sources": sources,
        "conventions": {
            "label_set": label_set,
            "label_order": "925 seen (TagList1k order) then 81 unseen (Concepts81 order), as "
            "BiAM/MKT/RCNn/QKS; LESA put the 81 first",
            "seen_labels": "NUS_WID_Tags/AllTags1k.txt (user tags): present +1, absent -1",
            "unseen_labels": "Groundtruth/AllLabels (human ground truth): +1/-1 on test, "
            "0 (unknown) on train",
            "image_id": "Imagelist path with '/' separators; BiAM's flat name is "
            "image_id.replace('/', '_')",
            "url": f"first non-null of {list(url_preference)}",
            "drop_test_no_positive": drop_test_no_positive,
            "drop_train_no_positive": drop_train_no_positive,
            "drop_missing": drop_missing,
        },
        "n_images_listed": n_all,
        "n_images_in_neither_split": n_all - len(train_rows) - len(test_rows),
        "urls": url_stats,
    }
    if standard:
        meta["conventions"].update(
            label_order="the 81 concepts (Concepts81 order), all seen; no unseen block",
            seen_labels="Groundtruth/AllLabels (human ground truth): +1/-1 on train and test",
            unseen_labels="none",
        )

    train_ids = np.asarray([all_ids[i] for i in train_rows], dtype=str)
    test_ids = np.asarray([all_ids[i] for i in test_rows], dtype=str)
    train_urls = [urls[i] for i in train_rows]
    test_urls = [urls[i] for i in test_rows]

    masks_train = no_positive_masks(train_labels, n_seen)
    masks_test = no_positive_masks(test_labels, n_seen)
    meta["train_without_positive"] = {"seen": int(masks_train["seen"].sum())}
    meta["test_without_positive"] = {k: int(v.sum()) for k, v in masks_test.items()}

    keep_train = np.ones(len(train_ids), dtype=bool)
    keep_test = np.ones(len(test_ids), dtype=bool)
    if images_dir is not None:
        placeholder = reference.flickr_placeholder()
        images_dir = Path(images_dir)
        present_train = np.array(
            [image_present(images_dir, i, placeholder) for i in train_ids], dtype=bool
        )
        present_test = np.array(
            [image_present(images_dir, i, placeholder) for i in test_ids], dtype=bool
        )
        meta["missing_images"] = {
            "images_dir": str(images_dir),
            "train": int((~present_train).sum()),
            "test": int((~present_test).sum()),
            "dropped": drop_missing,
        }
        if drop_missing:
            keep_train &= present_train
            keep_test &= present_test
    if drop_train_no_positive:
        keep_train &= ~masks_train["seen"]
    if drop_test_no_positive != "none":
        keep_test &= ~masks_test[drop_test_no_positive]
    meta["dropped"] = {
        "train": int((~keep_train).sum()),
        "test": int((~keep_test).sum()),
    }

    train = Split(train_ids[keep_train], train_labels[keep_train])
    test = Split(test_ids[keep_test], test_labels[keep_test])
    manifest = pl.DataFrame(
        {
            "image_id": [*train.image_ids.tolist(), *test.image_ids.tolist()],
            "url": [
                *(u for u, k in zip(train_urls, keep_train, strict=True) if k),
                *(u for u, k in zip(test_urls, keep_test, strict=True) if k),
            ],
            "md5": [None] * (len(train.image_ids) + len(test.image_ids)),
            "split": ["train"] * len(train.image_ids) + ["test"] * len(test.image_ids),
        },
        schema=MANIFEST_SCHEMA,
    )
    space = LabelSpace(seen=[Label(t, t) for t in seen], unseen=[Label(c, c) for c in concepts])
    return PreparedDataset(NAME, space, {"train": train, "test": test}, manifest, meta)


# --------------------------------------------------------------------------- helpers


def _check_against_reference(path: Path, got: list[str], want: list[str], what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            raise ParseError(
                path,
                i + 1,
                f"{what} {a!r} differs from the standard list ({b!r} expected here)",
                "use the original release file, or pass check_reference=False for a modified release",
            )
    if len(got) != len(want):
        raise ParseError(
            path,
            min(len(got), len(want)) + 1,
            f"{len(got)} {what}s, the standard list has {len(want)}",
            "use the original release file, or pass check_reference=False for a modified release",
        )


def _read_image_list(path: Path) -> list[str]:
    out = []
    for lineno, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            raise ParseError(path, lineno, "empty line in the image list")
        out.append(image_key(raw))
    if not out:
        raise ParseError(path, None, "the image list is empty")
    return out


def _subset_rows(path: Path, index: dict[str, int], all_path: Path) -> np.ndarray:
    rows = []
    seen: set[str] = set()
    for lineno, img in enumerate(_read_image_list(path), start=1):
        if img not in index:
            raise ParseError(path, lineno, f"image {img!r} is not in {all_path.name}")
        if img in seen:
            raise ParseError(path, lineno, f"image {img!r} listed twice")
        seen.add(img)
        rows.append(index[img])
    return np.asarray(rows, dtype=np.int64)


def _read_urls(
    path: Path, index: dict[str, int], preference: Sequence[str]
) -> tuple[list[str | None], dict[str, Any]]:
    lines = read_lines(path)
    if not lines:
        raise ParseError(path, 1, "file is empty (no header)")
    header = lines[0].split()
    missing = [c for c in ("Photo_file", *preference) if c not in header]
    if missing:
        raise ParseError(
            path,
            1,
            f"header lacks column(s) {missing}; found {header}",
            "this does not look like NUS-WIDE-urls.txt from the release",
        )
    col_file = header.index("Photo_file")
    cols = [(f, header.index(f)) for f in preference]
    urls: list[str | None] = [None] * len(index)
    used = dict.fromkeys(preference, 0)
    found = np.zeros(len(index), dtype=bool)
    unknown = 0
    for lineno, raw in enumerate(lines[1:], start=2):
        fields = raw.split()
        if not fields:
            raise ParseError(path, lineno, "empty line")
        if len(fields) != len(header):
            raise ParseError(
                path,
                lineno,
                f"expected {len(header)} whitespace-separated fields, found {len(fields)}",
            )
        key = image_key(fields[col_file])
        row = index.get(key)
        if row is None:
            unknown += 1
            continue
        found[row] = True
        for name, c in cols:
            val = fields[c]
            if val.lower() != "null":
                urls[row] = val
                used[name] += 1
                break
    stats = {
        "file": path.name,
        "field_used": used,
        "no_url": int(sum(u is None for u in urls)),
        "images_not_in_url_file": int((~found).sum()),
        "url_rows_for_unlisted_images": unknown,
    }
    return urls, stats
