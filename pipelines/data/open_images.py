"""Open Images v4 (2018_04) → prepared dataset (7,186 seen + 400 unseen labels).

Release files read (each directly under the release directory or under ``train/``,
``test/`` as on the download server; names match case-insensitively)::

    class-descriptions.csv                         MID,display name (no header)
    classes-trainable.txt                          the 7,186 trainable MIDs = seen labels
    train-images-with-labels-with-rotation.csv     ImageID,Subset,OriginalURL,...,OriginalMD5,...
    test-images-with-rotation.csv                  (…-with-labels-with-rotation.csv also accepted)
    {train,test}-annotations-human-imagelabels.csv ImageID,Source,LabelName,Confidence

Conventions (recorded in meta.json):

* Everything is keyed by MID. Display names (``Label.name``) are the class-descriptions
  names with surrounding whitespace removed, as LESA's loader does; 108 of them repeat among
  the seen labels and two unseen names equal seen names, so names are never used as keys.
* Confidence 1 → +1, 0 → -1, no annotation → 0. Duplicate (image, label) rows (several
  sources) are merged; if they disagree the positive wins (counted in meta.json).
* Seen = classes-trainable.txt in file order. Unseen = the 400 labels of LESA (see
  ``unseen_selection`` below), in the order of top_400_unseen.csv. Columns: seen then unseen.
* Train rows: images of the train images file (file order) with at least one annotation
  on a seen label; seen columns ±1/0, unseen columns 0. Stored sparsely
  (``train_sparse.npz``, see :mod:`pipelines.data.sparse_labels`) when the dense matrix would
  exceed ``dense_limit_bytes`` — always the case for the real release (~9M x 7,586).
* Test rows: images of the test images file (file order) with at least one human label
  annotation of any class — the images LESA's extractor iterates over. Seen and unseen ±1/0.
  Stored dense (125,436 x 7,586 int8 = 0.95 GB).
* The validation split is not used (the reference methods train on train, test on test).
* Manifest: image_id = ImageID, url = OriginalURL, md5 = OriginalMD5 (base64, as published).

The 400 unseen labels (``unseen_selection``):

* ``"reference"`` (default): LESA's own selection is authoritative — the packaged
  top_400_unseen.csv indexes LESA's 2,594 candidate list (unseen_labels_2594.txt). LESA
  never published the code or counts behind it, so it cannot be re-derived exactly. The
  parser verifies that every selected MID is described in class-descriptions.csv, is not a
  trainable class, and occurs in the release's test annotations, and fails clearly otherwise.
  It also applies the derivation rule below, with both frequency measures, to the release and
  records in meta.json (``unseen_selection.derivation_check``) whether each reproduces the
  reference selection and order — on the real release this settles which rule LESA used.
* ``"derive"``: candidate unseen labels are the MIDs that occur in the test annotations and
  are not trainable (presumably LESA's 2,594, a list sorted by MID; meta.json records whether
  the sets agree); they are ranked by test frequency (``rank_by="annotated"``: distinct test
  images annotated with the label, either confidence — what a ``value_counts`` of the
  annotation file gives; or ``"positive"``: images with Confidence 1), ties broken by MID, and
  the top ``n_unseen`` kept. On a fixture whose counts decrease in the reference order this
  reproduces unseen_400_mids.txt exactly (tests/test_data_open_images.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.data import reference
from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.data.sparse_labels import SparseLabels, SparsePreparedDataset
from pipelines.data.splits import (
    ParseError,
    check_drop_choice,
    check_header,
    find_file,
    image_present,
    iter_csv,
    no_positive_masks,
    read_list,
    source_info,
    validate_csv,
)

NAME = "open-images-v4"
IMAGES_HEADER = (
    "ImageID",
    "Subset",
    "OriginalURL",
    "OriginalLandingURL",
    "License",
    "AuthorProfileURL",
    "Author",
    "Title",
    "OriginalSize",
    "OriginalMD5",
    "Thumbnail300KURL",
    "Rotation",
)
ANNOTATIONS_HEADER = ("ImageID", "Source", "LabelName", "Confidence")
DESCRIPTION_HEADERS = (["LabelName", "DisplayName"], ["LabelName", "Description"])
MANIFEST_SCHEMA = {"image_id": pl.Utf8, "url": pl.Utf8, "md5": pl.Utf8, "split": pl.Utf8}
DEFAULT_DENSE_LIMIT = 2 * 1024**3  # bytes of int8 labels above which train goes sparse


def _candidates(split: str, *names: str) -> list[str]:
    return [p for n in names for p in (n, f"{split}/{n}", f"2018_04/{n}", f"2018_04/{split}/{n}")]


def prepare(
    release_dir: Path,
    out_dir: Path,
    *,
    unseen_selection: str = "reference",
    n_unseen: int = 400,
    rank_by: str = "annotated",
    sparse_train: bool | None = None,
    dense_limit_bytes: int = DEFAULT_DENSE_LIMIT,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    check_reference: bool = True,
) -> PreparedDataset:
    """Parse an Open Images v4 release and save the prepared dataset to ``out_dir`` atomically.

    Options:
        unseen_selection: "reference" (LESA's 400, verified against the release) or "derive"
            (rank test-annotation labels that are not trainable; see the module docstring).
        n_unseen: how many unseen labels "derive" keeps (the reference has 400).
        rank_by: "annotated" or "positive" — the frequency "derive" ranks by (and the rule
            checked against the reference in "reference" mode).
        sparse_train: store train labels sparsely (True), densely (False) or decide by size
            (None: sparse when N x C int8 exceeds ``dense_limit_bytes``).
        images_dir: downloaded images (``<ImageID>.jpg`` or ``<split>/<ImageID>.jpg``); when
            given, absent images (or Flickr's dead-link placeholder) are counted.
        drop_missing: drop those images (needs ``images_dir``).
        drop_test_no_positive: "none" (default), "unseen" or "any" — as for NUS-WIDE.
        check_reference: require classes-trainable.txt to equal the standard 7,186 list.
    """
    ds = parse(
        release_dir,
        unseen_selection=unseen_selection,
        n_unseen=n_unseen,
        rank_by=rank_by,
        sparse_train=sparse_train,
        dense_limit_bytes=dense_limit_bytes,
        images_dir=images_dir,
        drop_missing=drop_missing,
        drop_test_no_positive=drop_test_no_positive,
        check_reference=check_reference,
    )
    ds.save(out_dir)
    return ds


def parse(
    release_dir: Path,
    *,
    unseen_selection: str = "reference",
    n_unseen: int = 400,
    rank_by: str = "annotated",
    sparse_train: bool | None = None,
    dense_limit_bytes: int = DEFAULT_DENSE_LIMIT,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    check_reference: bool = True,
) -> SparsePreparedDataset:
    """Everything :func:`prepare` does except writing."""
    if unseen_selection not in ("reference", "derive"):
        raise ValueError(
            f"unseen_selection must be 'reference' or 'derive', got {unseen_selection!r}"
        )
    if rank_by not in ("annotated", "positive"):
        raise ValueError(f"rank_by must be 'annotated' or 'positive', got {rank_by!r}")
    if unseen_selection == "reference" and n_unseen != 400:
        raise ValueError(
            "n_unseen only applies to unseen_selection='derive' (the reference has 400)"
        )
    check_drop_choice(drop_test_no_positive)
    if drop_missing and images_dir is None:
        raise ValueError("drop_missing needs images_dir (where the downloaded images are)")
    root = Path(release_dir)
    sources: dict[str, Any] = {}

    # ---------------------------------------------------------------- classes
    desc_path = find_file(root, _candidates("", "class-descriptions.csv"), "class-descriptions.csv")
    names = _read_descriptions(desc_path)
    trainable_path = find_file(
        root, _candidates("", "classes-trainable.txt"), "classes-trainable.txt"
    )
    seen = read_list(trainable_path, "trainable MID")
    for lineno, mid in enumerate(seen, start=1):
        if mid not in names:
            raise ParseError(
                trainable_path, lineno, f"unknown label {mid!r} (not in {desc_path.name})"
            )
    if check_reference and seen != reference.oi_trainable():
        ref = reference.oi_trainable()
        line = next(
            (i + 1 for i, (a, b) in enumerate(zip(seen, ref, strict=False)) if a != b),
            min(len(seen), len(ref)) + 1,
        )
        raise ParseError(
            trainable_path,
            line,
            f"differs from the standard 7,186 trainable classes ({len(seen)} MIDs here)",
            "use the 2018_04 release file, or pass check_reference=False for a modified release",
        )
    seen_set = set(seen)
    sources["class_descriptions"] = source_info(desc_path, root)
    sources["classes_trainable"] = source_info(trainable_path, root)

    # ---------------------------------------------------------------- images files
    images: dict[str, pl.DataFrame] = {}
    for split in ("train", "test"):
        p = find_file(
            root,
            _candidates(
                split,
                f"{split}-images-with-labels-with-rotation.csv",
                f"{split}-images-with-rotation.csv",
            ),
            f"{split} images file ({split}-images-with-labels-with-rotation.csv)",
        )
        images[split] = _read_images(p)
        sources[f"{split}_images"] = source_info(p, root)
    image_paths = {s: root / sources[f"{s}_images"]["path"] for s in ("train", "test")}

    # ---------------------------------------------------------------- test annotations
    test_ann_path = find_file(
        root,
        _candidates("test", "test-annotations-human-imagelabels.csv"),
        "test-annotations-human-imagelabels.csv",
    )
    sources["test_annotations"] = source_info(test_ann_path, root)
    test_ids_all = images["test"]["ImageID"]
    test_ann = (
        _scan_annotations(test_ann_path, names, test_ids_all, image_paths["test"])
        .select("ImageID", "LabelName", "Confidence")
        .collect()
    )

    # ---------------------------------------------------------------- unseen labels
    ranking = _rank_candidates(test_ann, seen_set, rank_by)
    selection: dict[str, Any] = {"mode": unseen_selection, "rank_by": rank_by}
    if unseen_selection == "reference":
        unseen = reference.oi_unseen_400()
        _verify_reference_unseen(
            unseen, names, desc_path, seen_set, trainable_path, test_ann, test_ann_path
        )
        selection["source"] = (
            "LESA top_400_unseen.csv indices into unseen_labels_2594.txt (packaged reference)"
        )
        candidates = set(ranking["LabelName"].to_list())
        check: dict[str, Any] = {
            "n_candidates_in_release": len(candidates),
            "candidates_equal_lesa_2594": candidates == set(reference.oi_unseen_candidates_2594()),
        }
        for rule in ("annotated", "positive"):
            top = _rank_candidates(test_ann, seen_set, rule)["LabelName"].head(len(unseen))
            top_list = top.to_list()
            check[f"rank_by_{rule}"] = {
                "equals_reference_order": top_list == unseen,
                "equals_reference_set": set(top_list) == set(unseen),
                "overlap_with_reference": len(set(top_list) & set(unseen)),
            }
        selection["derivation_check"] = check
    else:
        if ranking.height < n_unseen:
            raise ParseError(
                test_ann_path,
                None,
                f"only {ranking.height} non-trainable labels occur in the test annotations; "
                f"cannot select {n_unseen} unseen labels",
                "use the complete 2018_04 test annotations, or lower n_unseen",
            )
        unseen = ranking["LabelName"].head(n_unseen).to_list()
        selection["source"] = (
            "derived: test-annotation MIDs not in classes-trainable.txt, ranked by "
            f"{'distinct annotated test images' if rank_by == 'annotated' else 'positive test images'}"
            " (desc), ties by MID"
        )
    stats = ranking.filter(pl.col("LabelName").is_in(unseen))
    selection["min_test_images_annotated"] = int(stats["n_annotated"].min()) if stats.height else 0
    selection["min_test_images_positive"] = int(stats["n_positive"].min()) if stats.height else 0

    all_labels = [*seen, *unseen]
    col_of = pl.DataFrame(
        {"LabelName": all_labels, "col": np.arange(len(all_labels), dtype=np.int32)},
        schema={"LabelName": pl.Utf8, "col": pl.Int32},
    )
    C = len(all_labels)

    # ---------------------------------------------------------------- test split (dense)
    annotated = set(test_ann["ImageID"].unique().to_list())
    test_frame = images["test"].filter(pl.col("ImageID").is_in(list(annotated)))
    test_order = pl.DataFrame(
        {"ImageID": test_frame["ImageID"], "row": np.arange(test_frame.height, dtype=np.int64)}
    )
    cells = (
        test_ann.join(col_of, on="LabelName", how="inner")
        .group_by("ImageID", "col")
        .agg(
            pos=(pl.col("Confidence") == "1").any(),
            neg=(pl.col("Confidence") == "0").any(),
        )
        .join(test_order, on="ImageID", how="inner")
    )
    test_labels = np.zeros((test_frame.height, C), dtype=np.int8)
    r = cells["row"].to_numpy()
    c = cells["col"].to_numpy()
    test_labels[r, c] = np.where(cells["pos"].to_numpy(), 1, -1).astype(np.int8)
    test_conflicts = int((cells["pos"] & cells["neg"]).sum())
    test_ids = test_frame["ImageID"].to_numpy().astype(str)

    # ---------------------------------------------------------------- train split (streamed)
    train_ann_path = find_file(
        root,
        _candidates("train", "train-annotations-human-imagelabels.csv"),
        "train-annotations-human-imagelabels.csv",
    )
    sources["train_annotations"] = source_info(train_ann_path, root)
    train_ids_all = images["train"]["ImageID"]
    train_lf = _scan_annotations(train_ann_path, names, train_ids_all, image_paths["train"])
    train_order = pl.DataFrame(
        {"ImageID": train_ids_all, "order": np.arange(len(train_ids_all), dtype=np.int64)}
    )
    seen_cols = col_of.head(len(seen))
    train_cells = (
        train_lf.select("ImageID", "LabelName", "Confidence")
        .join(seen_cols.lazy(), on="LabelName", how="inner")
        .group_by("ImageID", "col")
        .agg(
            pos=(pl.col("Confidence") == "1").any(),
            neg=(pl.col("Confidence") == "0").any(),
        )
        .join(train_order.lazy(), on="ImageID", how="inner")
        .select("order", "col", "pos", "neg")
        .collect(engine="streaming")
    )
    unseen_set = set(unseen)
    train_label_stats = (
        train_lf.select(
            n_rows=pl.len(),
            n_seen=pl.col("LabelName").is_in(seen).sum(),
            n_unseen=pl.col("LabelName").is_in(unseen).sum(),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    order = train_cells["order"].to_numpy()
    kept_orders, rows = np.unique(order, return_inverse=True)
    train_image_ids = train_ids_all.to_numpy()[kept_orders].astype(str)
    sparse = SparseLabels.from_coo(
        train_image_ids,
        rows,
        train_cells["col"].to_numpy(),
        np.where(train_cells["pos"].to_numpy(), 1, -1).astype(np.int8),
        C,
    )
    train_conflicts = int((train_cells["pos"] & train_cells["neg"]).sum())
    del train_cells, order, rows

    # ---------------------------------------------------------------- drops, presence
    meta: dict[str, Any] = {
        "release": str(root),
        "sources": sources,
        "unseen_selection": selection,
        "conventions": {
            "label_order": "7,186 seen (classes-trainable.txt order) then unseen "
            "(top_400_unseen.csv order)",
            "labels": "Confidence 1 → +1, 0 → -1, not annotated → 0; duplicate rows merged, "
            "positive wins",
            "train_rows": "train images with at least one seen-label annotation",
            "test_rows": "test images with at least one human image-level annotation "
            "(LESA's extractor)",
            "names": "class-descriptions display names, whitespace-stripped; not unique — "
            "key by MID",
            "validation_split": "not used",
            "drop_test_no_positive": drop_test_no_positive,
            "drop_missing": drop_missing,
        },
        "annotations": {
            "train_rows": int(train_label_stats["n_rows"]),
            "train_rows_on_seen": int(train_label_stats["n_seen"]),
            "train_rows_on_unseen_400": int(train_label_stats["n_unseen"]),
            "train_conflicting_duplicates": train_conflicts,
            "test_rows": int(test_ann.height),
            "test_rows_outside_label_space": int(
                test_ann.filter(~pl.col("LabelName").is_in(all_labels)).height
            ),
            "test_conflicting_duplicates": test_conflicts,
        },
        "images": {
            "train_listed": int(images["train"].height),
            "train_without_seen_annotation": int(images["train"].height - len(train_image_ids)),
            "test_listed": int(images["test"].height),
            "test_without_annotation": int(images["test"].height - test_frame.height),
        },
    }
    del test_ann
    masks_test = no_positive_masks(test_labels, len(seen))
    meta["test_without_positive"] = {k: int(v.sum()) for k, v in masks_test.items()}
    meta["test_without_label_in_label_space"] = int((~(test_labels != 0).any(axis=1)).sum())
    train_has_pos = np.zeros(len(train_image_ids), dtype=bool)
    train_has_pos[sparse.row[sparse.value == 1]] = True
    meta["train_without_positive"] = {"seen": int((~train_has_pos).sum())}

    keep_train = np.ones(len(train_image_ids), dtype=bool)
    keep_test = np.ones(len(test_ids), dtype=bool)
    if images_dir is not None:
        images_dir = Path(images_dir)
        placeholder = reference.flickr_placeholder()
        present = {}
        for split, ids in (("train", train_image_ids), ("test", test_ids)):
            present[split] = np.array(
                [
                    image_present(images_dir, f"{i}.jpg", placeholder)
                    or image_present(images_dir, f"{split}/{i}.jpg", placeholder)
                    for i in ids
                ],
                dtype=bool,
            )
        meta["missing_images"] = {
            "images_dir": str(images_dir),
            "train": int((~present["train"]).sum()),
            "test": int((~present["test"]).sum()),
            "dropped": drop_missing,
        }
        if drop_missing:
            keep_train &= present["train"]
            keep_test &= present["test"]
    if drop_test_no_positive != "none":
        keep_test &= ~masks_test[drop_test_no_positive]
    meta["dropped"] = {"train": int((~keep_train).sum()), "test": int((~keep_test).sum())}
    if not keep_train.all():
        sparse = _subset_sparse(sparse, keep_train)
    test = Split(test_ids[keep_test], test_labels[keep_test])
    del test_labels

    if sparse_train is None:
        sparse_train = sparse.shape[0] * C > dense_limit_bytes
    meta["conventions"]["train_storage"] = "sparse (train_sparse.npz)" if sparse_train else "dense"

    # ---------------------------------------------------------------- manifest
    manifest = pl.concat(
        [
            _manifest_rows(images["train"], sparse.image_ids, "train"),
            _manifest_rows(images["test"], test.image_ids, "test"),
        ]
    )
    space = LabelSpace(
        seen=[Label(m, names[m]) for m in seen], unseen=[Label(m, names[m]) for m in unseen]
    )
    assert not (unseen_set & seen_set)
    if sparse_train:
        return SparsePreparedDataset(
            NAME, space, {"test": test}, manifest, meta, sparse_splits={"train": sparse}
        )
    return SparsePreparedDataset(
        NAME, space, {"train": sparse.to_split(), "test": test}, manifest, meta
    )


# --------------------------------------------------------------------------- readers


def _read_descriptions(path: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, row in iter_csv(path):
        if lineno == 1 and [c.strip() for c in row] in DESCRIPTION_HEADERS:
            continue
        if len(row) != 2:
            raise ParseError(
                path,
                lineno,
                f"expected 2 comma-separated fields (MID,name), found {len(row)}"
                + (" (empty line)" if not row else ""),
            )
        mid, name = row[0].strip(), row[1].strip()
        if not mid.startswith("/"):
            raise ParseError(path, lineno, f"{mid!r} is not a MID (like /m/0abc)")
        if mid in names:
            raise ParseError(
                path, lineno, f"MID {mid} described twice (first on line {first_line[mid]})"
            )
        names[mid] = name
        first_line[mid] = lineno
    if not names:
        raise ParseError(path, None, "no classes described")
    return names


def _read_images(path: Path) -> pl.DataFrame:
    """ImageID, OriginalURL, OriginalMD5 of an images file, in file order (validated)."""

    def check(row: list[str]) -> str | None:
        if not row[0].strip():
            return "empty ImageID"
        return None

    n = validate_csv(path, IMAGES_HEADER, check)
    df = pl.read_csv(
        path,
        infer_schema=False,
        columns=["ImageID", "OriginalURL", "OriginalMD5"],
    )
    if df.height != n:  # the Python and polars CSV readers disagree — should not happen
        raise ParseError(path, None, f"read {df.height} rows but validated {n}")
    dup = df["ImageID"].is_duplicated()
    if dup.any():
        first_dup = df["ImageID"][int(dup.arg_max())]
        lines = [ln for ln, row in iter_csv(path) if row and row[0] == first_dup]
        raise ParseError(
            path,
            lines[1] if len(lines) > 1 else None,
            f"ImageID {first_dup} listed twice"
            + (f" (first on line {lines[0]})" if len(lines) > 1 else ""),
        )
    return df


def _scan_annotations(
    path: Path, names: dict[str, str], image_ids: pl.Series, images_path: Path
) -> pl.LazyFrame:
    """Validate an annotations CSV (fast, in polars) and return a lazy scan of it.

    The first bad record — wrong field count, empty field, Confidence other than 0/1, a MID
    not in class-descriptions.csv, an ImageID not in the images file — raises ParseError with
    its line number (located with the Python CSV reader, only on the error path).
    """
    first = next(iter_csv(path), None)
    if first is None:
        raise ParseError(path, 1, "file is empty (no header)")
    check_header(path, ANNOTATIONS_HEADER, first[1], first[0])
    lf = pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=False)
    mids = pl.Series("mids", list(names), dtype=pl.Utf8)
    bad = (
        pl.any_horizontal([pl.col(c).is_null() for c in ANNOTATIONS_HEADER])
        | ~pl.col("Confidence").is_in(["0", "1"])
        | ~pl.col("LabelName").is_in(mids.implode())
        | ~pl.col("ImageID").is_in(image_ids.implode())
    )
    try:
        hit = lf.with_row_index("_i").filter(bad).select("_i").head(1).collect(engine="streaming")
    except pl.exceptions.PolarsError as err:
        validate_csv(path, ANNOTATIONS_HEADER)  # raises ParseError at the bad line
        raise ParseError(path, None, f"unreadable CSV ({err})") from None
    if hit.height:
        _raise_at_record(path, int(hit["_i"][0]), names, image_ids, images_path)
    return lf


def _raise_at_record(
    path: Path, index: int, names: dict[str, str], image_ids: pl.Series, images_path: Path
) -> None:
    for i, (lineno, row) in enumerate(iter_csv(path)):
        if i != index + 1:
            continue
        if len(row) != len(ANNOTATIONS_HEADER):
            raise ParseError(
                path,
                lineno,
                f"expected {len(ANNOTATIONS_HEADER)} comma-separated fields, found {len(row)}"
                + (" (empty line)" if not row else " (truncated or corrupted line?)"),
            )
        image_id, _source, mid, conf = (f.strip() for f in row)
        for name, val in zip(ANNOTATIONS_HEADER, (image_id, _source, mid, conf), strict=True):
            if not val:
                raise ParseError(path, lineno, f"empty {name}")
        if conf not in ("0", "1"):
            raise ParseError(path, lineno, f"Confidence {conf!r} is not 0 or 1")
        if mid not in names:
            raise ParseError(path, lineno, f"unknown label {mid!r} (not in class-descriptions.csv)")
        if image_id not in set(image_ids.to_list()):
            raise ParseError(
                path,
                lineno,
                f"unknown image {image_id!r} (not in {images_path.name})",
                f"use the {images_path.name} of the same release, complete",
            )
        raise ParseError(path, lineno, f"malformed record {row!r}")
    raise ParseError(path, None, f"malformed record #{index + 1}")


def _rank_candidates(test_ann: pl.DataFrame, seen: set[str], rank_by: str) -> pl.DataFrame:
    """Non-trainable test labels with their test frequency, most frequent first (ties: MID)."""
    key = "n_annotated" if rank_by == "annotated" else "n_positive"
    return (
        test_ann.filter(~pl.col("LabelName").is_in(list(seen)))
        .group_by("LabelName")
        .agg(
            n_annotated=pl.col("ImageID").n_unique(),
            n_positive=pl.col("ImageID").filter(pl.col("Confidence") == "1").n_unique(),
        )
        .sort([key, "LabelName"], descending=[True, False])
    )


def _verify_reference_unseen(
    unseen: list[str],
    names: dict[str, str],
    desc_path: Path,
    seen: set[str],
    trainable_path: Path,
    test_ann: pl.DataFrame,
    test_ann_path: Path,
) -> None:
    top_path = reference.reference_path(reference.OI_TOP_400)
    lines = [ln for ln, _ in reference.oi_top400_indices()]
    in_test = set(test_ann["LabelName"].unique().to_list())
    for mid, ln in zip(unseen, lines, strict=True):
        where = f"unseen label {mid} ({top_path.name} line {ln})"
        if mid not in names:
            raise ParseError(
                desc_path,
                None,
                f"{where} is not described",
                "use the 2018_04 class-descriptions.csv",
            )
        if mid in seen:
            raise ParseError(
                trainable_path,
                None,
                f"{where} is listed as trainable",
                "use the 2018_04 classes-trainable.txt",
            )
        if mid not in in_test:
            raise ParseError(
                test_ann_path,
                None,
                f"{where} never occurs in the test annotations",
                "the 400 unseen labels are defined on the full 2018_04 test set: use the "
                "complete test-annotations-human-imagelabels.csv (or unseen_selection='derive' "
                "for a custom subset)",
            )


def _subset_sparse(sp: SparseLabels, keep: np.ndarray) -> SparseLabels:
    new_index = np.cumsum(keep) - 1
    mask = keep[sp.row]
    return SparseLabels(
        sp.image_ids[keep], new_index[sp.row[mask]], sp.col[mask], sp.value[mask], sp.n_labels
    )


def _manifest_rows(images: pl.DataFrame, ids: np.ndarray, split: str) -> pl.DataFrame:
    order = pl.DataFrame({"ImageID": np.asarray(ids, dtype=str)}, schema={"ImageID": pl.Utf8})
    joined = order.join(images, on="ImageID", how="left", maintain_order="left")
    return pl.DataFrame(
        {
            "image_id": joined["ImageID"],
            "url": joined["OriginalURL"],
            "md5": joined["OriginalMD5"],
            "split": [split] * joined.height,
        },
        schema=MANIFEST_SCHEMA,
    )
