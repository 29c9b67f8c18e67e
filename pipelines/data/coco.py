"""MS-COCO 2014 → prepared dataset (the standard 48 seen / 17 unseen zero-shot split).

Release files read (standard COCO format; directly under the release directory or under
``annotations/``)::

    annotations/instances_train2014.json
    annotations/instances_val2014.json

The split is shared/data/coco/zsl_split_48_17.json (packaged): indices into the 80 categories
in ascending category-id order (ZS-SDL's cls_ids.pickle, identical in RCNn's repository).

Conventions (recorded in meta.json):

* Label id = the COCO category id as a string, name = the category name of the release.
  Columns: the 48 seen then the 17 unseen, each in ascending category-id order.
* Train = train2014 images with at least one annotation of a seen category (ZS-SDL:
  ``CocoDetection`` keeps images with annotations, then ``get_only_relevant_gt`` keeps those
  with a label among the seen indices). Seen ±1, unseen 0. Images that also contain unseen
  objects are kept, their unseen columns unknown (0), as in ZS-SDL; ``exclude_train_with_unseen``
  removes them instead (the zero-shot *detection* convention of Bansal et al.).
* Test = val2014 images with at least one annotation (RCNn, DualCoOp), +1/-1 over all 65.
  Images whose annotations are all among the 15 categories outside the split have no positive:
  counted in meta.json; ``drop_test_no_positive`` drops them ("any") or every image without an
  unseen positive ("unseen", ZS-SDL's ZSL evaluation).
* Crowd annotations (iscrowd=1) count as labels, as in pycocotools ``imgToAnns``.
* image_id = file_name (``COCO_val2014_000000000042.jpg``); manifest url = coco_url; md5 null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.data import reference
from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.data.splits import (
    ParseError,
    check_drop_choice,
    find_file,
    keep_mask,
    no_positive_masks,
    normalize_path,
    read_text,
    source_info,
)

NAME = "coco-2014-48-17"
MANIFEST_SCHEMA = {"image_id": pl.Utf8, "url": pl.Utf8, "md5": pl.Utf8, "split": pl.Utf8}
REDOWNLOAD = "re-download annotations_trainval2014.zip from cocodataset.org and extract it again"


def prepare(
    release_dir: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    exclude_train_with_unseen: bool = False,
) -> PreparedDataset:
    """Parse a COCO 2014 release and save the prepared dataset to ``out_dir`` (atomically).

    Options:
        images_dir: where train2014/ and val2014/ images are (``<dir>/<file_name>`` or
            ``<dir>/{train2014,val2014}/<file_name>``); absent images are counted.
        drop_missing: drop absent images (needs ``images_dir``).
        drop_test_no_positive: "none" (default), "unseen" or "any".
        exclude_train_with_unseen: drop train images that contain an unseen category.
    """
    ds = parse(
        release_dir,
        images_dir=images_dir,
        drop_missing=drop_missing,
        drop_test_no_positive=drop_test_no_positive,
        exclude_train_with_unseen=exclude_train_with_unseen,
    )
    ds.save(out_dir)
    return ds


def parse(
    release_dir: Path,
    *,
    images_dir: Path | None = None,
    drop_missing: bool = False,
    drop_test_no_positive: str = "none",
    exclude_train_with_unseen: bool = False,
) -> PreparedDataset:
    """Everything :func:`prepare` does except writing."""
    check_drop_choice(drop_test_no_positive)
    if drop_missing and images_dir is None:
        raise ValueError("drop_missing needs images_dir (where the downloaded images are)")
    root = Path(release_dir)
    split_ref = reference.coco_zsl_split()

    parsed = {}
    sources = {}
    for split, sub in (("train", "train2014"), ("test", "val2014")):
        name = f"instances_{sub}.json"
        path = find_file(root, [f"annotations/{name}", name], f"annotations/{name}")
        parsed[split] = _read_instances(path)
        sources[split] = source_info(path, root)

    # categories: identical in both files, 80 of them, names as the reference expects
    cats = parsed["train"]["categories"]
    test_path = parsed["test"]["path"]
    if parsed["test"]["categories"] != cats:
        raise ParseError(
            test_path, "categories", "categories differ from instances_train2014.json", REDOWNLOAD
        )
    cat_ids = sorted(cats)
    if len(cat_ids) != len(split_ref["classes"]):
        raise ParseError(
            parsed["train"]["path"],
            "categories",
            f"{len(cat_ids)} categories; the 48/17 split indexes the 80 COCO categories",
            REDOWNLOAD,
        )
    for i, cid in enumerate(cat_ids):
        if cats[cid] != split_ref["classes"][i]:
            raise ParseError(
                parsed["train"]["path"],
                "categories",
                f"category #{i} in id order is {cats[cid]!r} (id {cid}); the 48/17 split "
                f"expects {split_ref['classes'][i]!r}",
                REDOWNLOAD,
            )
    seen_ids = [cat_ids[i] for i in split_ref["seen"]]
    unseen_ids = [cat_ids[i] for i in split_ref["unseen"]]
    col = {cid: j for j, cid in enumerate([*seen_ids, *unseen_ids])}
    n_seen, C = len(seen_ids), len(seen_ids) + len(unseen_ids)
    seen_set, unseen_set = set(seen_ids), set(unseen_ids)

    meta: dict[str, Any] = {
        "release": str(root),
        "sources": sources,
        "conventions": {
            "split": "zsl_split_48_17.json (ZS-SDL cls_ids.pickle): indices into the 80 "
            "categories in ascending id order",
            "label_order": "48 seen then 17 unseen, each in ascending category-id order",
            "train_rows": "train2014 images with >= 1 seen-category annotation"
            + ("; images with an unseen object excluded" if exclude_train_with_unseen else ""),
            "test_rows": "val2014 images with >= 1 annotation; +1/-1 over the 65 labels",
            "crowd_annotations": "counted as labels",
            "drop_test_no_positive": drop_test_no_positive,
            "drop_missing": drop_missing,
        },
    }

    splits: dict[str, Split] = {}
    manifest_parts = []
    for split in ("train", "test"):
        info = parsed[split]
        image_ids: list[str] = []
        urls: list[str | None] = []
        rows: list[np.ndarray] = []
        n_no_ann = n_no_seen = n_with_unseen = 0
        for img in info["images"]:
            cats_here = info["labels"].get(img["id"], set())
            if not cats_here:
                n_no_ann += 1
                continue
            if split == "train":
                if not cats_here & seen_set:
                    n_no_seen += 1
                    continue
                if cats_here & unseen_set:
                    n_with_unseen += 1
                    if exclude_train_with_unseen:
                        continue
                row = np.full(C, -1, dtype=np.int8)
                row[n_seen:] = 0
            else:
                row = np.full(C, -1, dtype=np.int8)
            for cid in cats_here:
                j = col.get(cid)
                if j is not None and (split == "test" or j < n_seen):
                    row[j] = 1
            image_ids.append(img["file_name"])
            urls.append(img["coco_url"])
            rows.append(row)
        labels = np.stack(rows) if rows else np.zeros((0, C), dtype=np.int8)
        stats: dict[str, Any] = {
            "images_listed": len(info["images"]),
            "images_without_annotation": n_no_ann,
            "annotations": info["n_annotations"],
            "crowd_annotations": info["n_crowd"],
            "annotations_outside_65": sum(1 for cid in info["ann_categories"] if cid not in col),
        }
        if split == "train":
            stats["images_without_seen_annotation"] = n_no_seen
            stats["images_with_unseen_object"] = n_with_unseen
        meta[f"{split}_images"] = stats
        masks = no_positive_masks(labels, n_seen)
        meta[f"{split}_without_positive"] = (
            {"seen": int(masks["seen"].sum())}
            if split == "train"
            else {k: int(v.sum()) for k, v in masks.items()}
        )
        sub = "train2014" if split == "train" else "val2014"
        splits[split], keep = kept_split(
            split,
            sub,
            image_ids,
            labels,
            masks,
            meta,
            images_dir=images_dir,
            drop_missing=drop_missing,
            drop_test_no_positive=drop_test_no_positive,
        )
        ids_arr = splits[split].image_ids
        manifest_parts.append(
            pl.DataFrame(
                {
                    "image_id": ids_arr.tolist(),
                    "url": [u for u, k in zip(urls, keep, strict=True) if k],
                    "md5": [None] * int(keep.sum()),
                    "split": [split] * int(keep.sum()),
                },
                schema=MANIFEST_SCHEMA,
            )
        )

    space = LabelSpace(
        seen=[Label(str(c), cats[c]) for c in seen_ids],
        unseen=[Label(str(c), cats[c]) for c in unseen_ids],
    )
    return PreparedDataset(NAME, space, splits, pl.concat(manifest_parts), meta)


def kept_split(
    split: str,
    sub: str,
    image_ids: list[str],
    labels: np.ndarray,
    masks: dict[str, np.ndarray],
    meta: dict[str, Any],
    *,
    images_dir: Path | None,
    drop_missing: bool,
    drop_test_no_positive: str,
) -> tuple[Split, np.ndarray]:
    """The split's kept rows (:func:`keep_mask`, which records what it drops in ``meta``),
    an image found at the images folder's top or under ``<sub>/`` (``train2014``, ``val2014``);
    returns the split and the keep mask."""
    keep = keep_mask(
        split,
        image_ids,
        masks,
        meta,
        images_dir=images_dir,
        candidates=lambda f: (f, f"{sub}/{f}"),
        drop_missing=drop_missing,
        drop_test_no_positive=drop_test_no_positive,
    )
    ids = np.asarray(image_ids, dtype=str)[keep] if image_ids else np.zeros(0, dtype=str)
    return Split(ids, labels[keep]), keep


def _read_instances(path: Path) -> dict[str, Any]:
    """Load and validate an instances JSON; errors point at the JSON line or element."""
    text = read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParseError(
            path,
            err.lineno,
            f"invalid JSON: {err.msg} (column {err.colno}; truncated file?)",
            REDOWNLOAD,
        ) from None
    if not isinstance(obj, dict):
        raise ParseError(path, 1, "expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise ParseError(path, key, f"missing or not a list: {key!r}", REDOWNLOAD)

    cats: dict[int, str] = {}
    for i, c in enumerate(obj["categories"]):
        where = f"categories[{i}]"
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("id"), int)
            or not isinstance(c.get("name"), str)
        ):
            raise ParseError(path, where, "a category needs an integer id and a string name")
        if c["id"] in cats:
            raise ParseError(path, where, f"category id {c['id']} defined twice")
        cats[c["id"]] = c["name"]

    images: list[dict[str, Any]] = []
    by_id: dict[int, int] = {}
    file_names: set[str] = set()
    for i, im in enumerate(obj["images"]):
        where = f"images[{i}]"
        if (
            not isinstance(im, dict)
            or not isinstance(im.get("id"), int)
            or not isinstance(im.get("file_name"), str)
        ):
            raise ParseError(path, where, "an image needs an integer id and a string file_name")
        if im["id"] in by_id:
            raise ParseError(path, where, f"image id {im['id']} listed twice")
        fname = normalize_path(im["file_name"])
        if not fname:
            raise ParseError(path, where, "empty file_name")
        if fname in file_names:
            raise ParseError(path, where, f"file_name {fname!r} listed twice")
        file_names.add(fname)
        by_id[im["id"]] = i
        url = im.get("coco_url")
        images.append(
            {"id": im["id"], "file_name": fname, "coco_url": url if isinstance(url, str) else None}
        )

    labels: dict[int, set[int]] = {}
    ann_categories: list[int] = []
    n_crowd = 0
    for i, a in enumerate(obj["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise ParseError(path, where, "an annotation must be an object")
        cid, iid = a.get("category_id"), a.get("image_id")
        if not isinstance(cid, int) or not isinstance(iid, int):
            raise ParseError(path, where, "an annotation needs integer image_id and category_id")
        if cid not in cats:
            raise ParseError(
                path, where, f"unknown label: category_id {cid} is not in categories", REDOWNLOAD
            )
        if iid not in by_id:
            raise ParseError(
                path, where, f"unknown image: image_id {iid} is not in images", REDOWNLOAD
            )
        labels.setdefault(iid, set()).add(cid)
        ann_categories.append(cid)
        n_crowd += bool(a.get("iscrowd", 0))
    return {
        "path": path,
        "categories": cats,
        "images": images,
        "labels": labels,
        "ann_categories": ann_categories,
        "n_annotations": len(obj["annotations"]),
        "n_crowd": n_crowd,
    }
