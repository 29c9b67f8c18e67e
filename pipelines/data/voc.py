"""PASCAL VOC 2007 → prepared dataset (a 20-class transfer / zero-shot test set).

Release files read (``--release`` may be the directory holding ``VOCdevkit/``, ``VOCdevkit``
itself, or ``VOC2007``; the trainval and test tarballs both extract into VOCdevkit/VOC2007)::

    VOCdevkit/VOC2007/ImageSets/Main/<class>_trainval.txt    "000005 -1" / "000007  1" / " 0"
    VOCdevkit/VOC2007/ImageSets/Main/<class>_test.txt
    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt     (optional) image order

Conventions (recorded in meta.json):

* Per-class value 1 → +1, -1 → -1, 0 ("difficult": the object occurs only as difficult
  instances, which the VOC protocol excludes from evaluation) → 0 = unknown.
* The papers use VOC2007 without a seen/unseen split: CoMC evaluates on the 4,952 test images
  with all 20 classes as novel. Default: all 20 labels seen, none unseen — use the test split as
  a transfer test set. ``unseen=[...]`` moves classes to the unseen block (train rows then carry
  0 there, test rows keep ±1/0).
* Label id = the class name as in the file names (``diningtable``); name = a prompt-friendly
  form (``dining table``, ``potted plant``, ``tv monitor``; others unchanged).
* image_id = the VOC image id (``000005``); the image is ``VOC2007/JPEGImages/<id>.jpg``.
  Train = trainval, test = test, in the order of ``{split}.txt`` (or of the first class file).
  Manifest url and md5 are null (VOC ships as tarballs, not per-image URLs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.data.splits import (
    ParseError,
    check_drop_choice,
    find_dir,
    find_file,
    keep_mask,
    no_positive_masks,
    read_lines,
    source_info,
)

NAME = "voc2007"
CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
DISPLAY_NAMES = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}
MANIFEST_SCHEMA = {"image_id": pl.Utf8, "url": pl.Utf8, "md5": pl.Utf8, "split": pl.Utf8}
SPLITS = (("train", "trainval"), ("test", "test"))
VALUES = {"1": 1, "-1": -1, "0": 0}


def prepare(
    release_dir: Path,
    out_dir: Path,
    *,
    unseen: Sequence[str] = (),
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
) -> PreparedDataset:
    """Parse a VOC2007 release and save the prepared dataset to ``out_dir`` (atomically).

    Options:
        unseen: classes to treat as unseen (default none: all 20 seen — a transfer test set).
        images_dir: directory of the JPEGs (``<id>.jpg`` or ``JPEGImages/<id>.jpg``); absent
            images are counted; defaults to nothing checked.
        drop_missing: drop absent images (needs ``images_dir``).
        drop_test_no_positive: "none" (default), "unseen" or "any".
    """
    ds = parse(
        release_dir,
        unseen=unseen,
        images_dir=images_dir,
        drop_missing=drop_missing,
        drop_test_no_positive=drop_test_no_positive,
    )
    ds.save(out_dir)
    return ds


def parse(
    release_dir: Path,
    *,
    unseen: Sequence[str] = (),
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
) -> PreparedDataset:
    """Everything :func:`prepare` does except writing."""
    check_drop_choice(drop_test_no_positive)
    if drop_missing and images_dir is None:
        raise ValueError("drop_missing needs images_dir (where the JPEGs are)")
    if drop_test_no_positive == "unseen" and not unseen:
        raise ValueError("drop_test_no_positive='unseen' needs unseen classes")
    unknown = [c for c in unseen if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown VOC classes in unseen: {unknown}; choose from {CLASSES}")
    if len(set(unseen)) != len(unseen):
        raise ValueError("unseen lists a class twice")
    root = Path(release_dir)
    main = find_dir(
        root,
        [
            "VOCdevkit/VOC2007/ImageSets/Main",
            "VOC2007/ImageSets/Main",
            "ImageSets/Main",
        ],
    )
    if main is None:
        raise ParseError(
            root / "VOCdevkit/VOC2007/ImageSets/Main",
            None,
            "ImageSets/Main not found",
            "extract VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar into --release",
        )
    unseen_set = set(unseen)
    seen = [c for c in CLASSES if c not in unseen_set]
    order = [*seen, *unseen]
    n_seen = len(seen)

    meta: dict[str, Any] = {
        "release": str(root),
        "sources": {"image_sets": main.relative_to(root).as_posix() if main != root else "."},
        "conventions": {
            "values": "1 → +1, -1 → -1, 0 (difficult only) → 0 unknown",
            "unseen": list(unseen) or "none: all 20 seen (transfer test set)",
            "label_order": "seen then unseen, each in the standard VOC class order",
            "image_id": "VOC image id; the file is JPEGImages/<id>.jpg",
            "drop_test_no_positive": drop_test_no_positive,
            "drop_missing": drop_missing,
        },
    }
    splits: dict[str, Split] = {}
    manifest_parts = []
    for split, voc_split in SPLITS:
        list_path = find_file(main, [f"{voc_split}.txt"], f"{voc_split}.txt", required=False)
        ids: list[str] | None = None
        if list_path is not None:
            ids = _read_ids(list_path)
            meta["sources"][f"{split}_list"] = source_info(list_path, root)
        per_class: dict[str, np.ndarray] = {}
        for cls in CLASSES:
            p = find_file(main, [f"{cls}_{voc_split}.txt"], f"ImageSets/Main/{cls}_{voc_split}.txt")
            if ids is None:
                ids = [i for i, _ in _read_class_file(p, None)]
            per_class[cls] = np.array([v for _, v in _read_class_file(p, ids)], dtype=np.int8)
        assert ids is not None
        labels = np.stack([per_class[c] for c in order], axis=1).astype(np.int8)
        if split == "train":
            labels[:, n_seen:] = 0
        masks = no_positive_masks(labels, n_seen)
        meta[f"{split}_without_positive"] = {
            k: int(v.sum()) for k, v in masks.items() if unseen or k != "unseen"
        }
        meta[f"{split}_difficult_cells"] = int(sum(int((per_class[c] == 0).sum()) for c in order))
        keep = keep_mask(
            split,
            ids,
            masks,
            meta,
            images_dir=images_dir,
            candidates=lambda i: (f"{i}.jpg", f"JPEGImages/{i}.jpg"),
            drop_missing=drop_missing,
            drop_test_no_positive=drop_test_no_positive,
        )
        ids_arr = np.asarray(ids, dtype=str)[keep]
        splits[split] = Split(ids_arr, labels[keep])
        n = len(ids_arr)
        manifest_parts.append(
            pl.DataFrame(
                {
                    "image_id": ids_arr.tolist(),
                    "url": [None] * n,
                    "md5": [None] * n,
                    "split": [split] * n,
                },
                schema=MANIFEST_SCHEMA,
            )
        )
    space = LabelSpace(
        seen=[Label(c, DISPLAY_NAMES.get(c, c)) for c in seen],
        unseen=[Label(c, DISPLAY_NAMES.get(c, c)) for c in unseen],
    )
    return PreparedDataset(NAME, space, splits, pl.concat(manifest_parts), meta)


def _read_ids(path: Path) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(read_lines(path), start=1):
        fields = raw.split()
        if len(fields) != 1:
            raise ParseError(path, lineno, f"expected one image id, found {len(fields)} fields")
        if fields[0] in seen:
            raise ParseError(path, lineno, f"image {fields[0]} listed twice")
        seen.add(fields[0])
        ids.append(fields[0])
    if not ids:
        raise ParseError(path, None, "the image list is empty")
    return ids


def _read_class_file(path: Path, expected: list[str] | None) -> list[tuple[str, int]]:
    """``[(image_id, value)]`` of a ``<class>_<split>.txt``, in the order of ``expected`` ids.

    Lines may come in any order; every id of the split must appear exactly once.
    """
    values: dict[str, int] = {}
    order: list[str] = []
    expected_set = set(expected) if expected is not None else None
    lines = read_lines(path)
    for lineno, raw in enumerate(lines, start=1):
        fields = raw.split()
        if len(fields) != 2:
            raise ParseError(
                path, lineno, f"expected 2 fields (image id, -1/0/1), found {len(fields)}"
            )
        img, val = fields
        if val not in VALUES:
            raise ParseError(path, lineno, f"value {val!r} is not -1, 0 or 1")
        if img in values:
            raise ParseError(path, lineno, f"image {img} listed twice")
        if expected_set is not None and img not in expected_set:
            raise ParseError(path, lineno, f"unknown image {img} (not in the split's image list)")
        values[img] = VALUES[val]
        order.append(img)
    if not values:
        raise ParseError(path, None, "empty class file")
    if expected is None:
        return [(i, values[i]) for i in order]
    if len(values) < len(expected):
        missing = next(i for i in expected if i not in values)
        raise ParseError(
            path,
            len(lines) + 1,
            f"file ends after {len(lines)} lines but the split has {len(expected)} images; "
            f"image {missing} has no value (truncated file?)",
        )
    return [(i, values[i]) for i in expected]
