"""MS-COCO 2014 → prepared dataset with all 80 categories (no seen/unseen split).

CoMC's all-labels task (CoMC Tables 1, 3-6 and Figures 2-3): a classifier trained on no
image scores every one of the 80 categories on val2014; few-shot (Table 3) fine-tunes it
on k labelled train2014 images per class. The 48/17 zero-shot split is :mod:`coco`
(dataset ``coco-zsl``); this module reads the same official files::

    annotations/instances_train2014.json
    annotations/instances_val2014.json

(directly under the release directory or under ``annotations/``; both ship in
annotations_trainval2014.zip).

Conventions (recorded in meta.json):

* Label id = the COCO category id as a string, name = the category name of the release.
  Columns: the 80 categories in ascending category-id order, all *seen* (no unseen block),
  as VOC2007's default in :mod:`voc`: the all-labels task scores every column.
* Train = train2014 images with at least one annotation, test = val2014 images with at
  least one annotation (TaI-DPT, DualCoOp, RCNn: annotated images only), ±1 over all 80.
  Unannotated images are counted in meta.json.
* Crowd annotations (iscrowd=1) count as labels, as in pycocotools ``imgToAnns``.
* image_id = file_name (``COCO_val2014_000000000042.jpg``); manifest url = coco_url; md5 null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.data import reference
from pipelines.data.coco import MANIFEST_SCHEMA, REDOWNLOAD, _read_instances, kept_split
from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.data.splits import ParseError, find_file, no_positive_masks, source_info

NAME = "coco-2014-all-80"
SPLITS = (("train", "train2014"), ("test", "val2014"))


def prepare(
    release_dir: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    drop_missing: bool = False,
) -> PreparedDataset:
    """Parse a COCO 2014 release into the 80-label dataset and save it to ``out_dir``
    (atomically).

    Options:
        images_dir: where train2014/ and val2014/ images are (``<dir>/<file_name>`` or
            ``<dir>/{train2014,val2014}/<file_name>``); absent images are counted.
        drop_missing: drop absent images (needs ``images_dir``).

    Every kept image has a positive (only annotated images are listed), so there is no
    ``drop_test_no_positive`` option.
    """
    ds = parse(release_dir, images_dir=images_dir, drop_missing=drop_missing)
    ds.save(out_dir)
    return ds


def parse(
    release_dir: Path, *, images_dir: Path | None = None, drop_missing: bool = False
) -> PreparedDataset:
    """Everything :func:`prepare` does except writing."""
    if drop_missing and images_dir is None:
        raise ValueError("drop_missing needs images_dir (where the downloaded images are)")
    root = Path(release_dir)
    parsed: dict[str, dict[str, Any]] = {}
    sources: dict[str, Any] = {}
    for split, sub in SPLITS:
        name = f"instances_{sub}.json"
        path = find_file(root, [f"annotations/{name}", name], f"annotations/{name}")
        parsed[split] = _read_instances(path)
        sources[split] = source_info(path, root)
    cats = _check_categories(parsed)
    cat_ids = sorted(cats)
    col = {cid: j for j, cid in enumerate(cat_ids)}
    C = len(cat_ids)

    meta: dict[str, Any] = {
        "release": str(root),
        "sources": sources,
        "conventions": {
            "label_order": "the 80 categories in ascending category-id order, all seen",
            "rows": "train2014 / val2014 images with >= 1 annotation; +1/-1 over the 80",
            "crowd_annotations": "counted as labels",
            "drop_missing": drop_missing,
        },
    }
    splits: dict[str, Split] = {}
    manifest_parts = []
    for split, sub in SPLITS:
        info = parsed[split]
        image_ids: list[str] = []
        urls: list[str | None] = []
        rows: list[np.ndarray] = []
        for img in info["images"]:
            here = info["labels"].get(img["id"], set())
            if not here:
                continue
            row = np.full(C, -1, dtype=np.int8)
            row[[col[c] for c in here]] = 1
            image_ids.append(img["file_name"])
            urls.append(img["coco_url"])
            rows.append(row)
        labels = np.stack(rows) if rows else np.zeros((0, C), dtype=np.int8)
        meta[f"{split}_images"] = {
            "images_listed": len(info["images"]),
            "images_without_annotation": len(info["images"]) - len(image_ids),
            "annotations": info["n_annotations"],
            "crowd_annotations": info["n_crowd"],
        }
        masks = no_positive_masks(labels, C)
        splits[split], keep = kept_split(
            split,
            sub,
            image_ids,
            labels,
            masks,
            meta,
            images_dir=images_dir,
            drop_missing=drop_missing,
            drop_test_no_positive="none",
        )
        ids_arr = splits[split].image_ids
        n = int(keep.sum())
        manifest_parts.append(
            pl.DataFrame(
                {
                    "image_id": ids_arr.tolist(),
                    "url": [u for u, k in zip(urls, keep, strict=True) if k],
                    "md5": [None] * n,
                    "split": [split] * n,
                },
                schema=MANIFEST_SCHEMA,
            )
        )
    space = LabelSpace(seen=[Label(str(c), cats[c]) for c in cat_ids], unseen=[])
    return PreparedDataset(NAME, space, splits, pl.concat(manifest_parts), meta)


def _check_categories(parsed: dict[str, dict[str, Any]]) -> dict[int, str]:
    """The 80 categories, identical in both files and named as the standard list (the
    category order of shared/data/coco/zsl_split_48_17.json)."""
    cats = parsed["train"]["categories"]
    if parsed["test"]["categories"] != cats:
        raise ParseError(
            parsed["test"]["path"],
            "categories",
            "categories differ from instances_train2014.json",
            REDOWNLOAD,
        )
    want = reference.coco_zsl_split()["classes"]
    path = parsed["train"]["path"]
    if len(cats) != len(want):
        raise ParseError(
            path, "categories", f"{len(cats)} categories; COCO 2014 has {len(want)}", REDOWNLOAD
        )
    for i, cid in enumerate(sorted(cats)):
        if cats[cid] != want[i]:
            raise ParseError(
                path,
                "categories",
                f"category #{i} in id order is {cats[cid]!r} (id {cid}); COCO 2014 has "
                f"{want[i]!r} there",
                REDOWNLOAD,
            )
    return cats
