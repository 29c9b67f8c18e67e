"""Build small releases in the publishers' own formats, for the dataset-parser tests.

Each ``build_*`` writes a release directory under a temporary path and returns a spec of
what it wrote (images, annotations) so tests can compute the expected labels independently
of the parser. Quirks (CRLF, BOM, backslash paths, missing final newline, duplicate names,
unlabelled images) are on by default; tests corrupt files afterwards for malformed-input cases.

NUS-WIDE uses the real TagList1k/Concepts81 (packaged reference copies); Open Images uses the
real class-descriptions.csv (from shared/data — tests skip without it) and classes-trainable.txt.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.data import reference

# --------------------------------------------------------------------------- text writing


def write_lines(
    path: Path,
    lines: list[str],
    *,
    crlf: bool = False,
    bom: bool = False,
    final_newline: bool = True,
) -> Path:
    eol = "\r\n" if crlf else "\n"
    text = eol.join(lines) + (eol if final_newline and lines else "")
    data = text.encode("utf-8")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_csv(path: Path, rows: list[list[str]], *, crlf: bool = False, bom: bool = False) -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    data = buf.getvalue().encode("utf-8")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def csv_line(fields: list[str]) -> str:
    """One CSV record (quoted where needed), without a line ending."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


def replace_line(path: Path, lineno: int, new: str | None) -> None:
    """Replace (or with None delete) 1-based line ``lineno`` of a file, keeping its line ending."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    old = lines[lineno - 1]
    ending = old[len(old.rstrip(b"\r\n")) :]
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new.encode() + ending
    path.write_bytes(b"".join(lines))


def truncate_lines(path: Path, keep: int) -> None:
    """Keep only the first ``keep`` lines of a file."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]))


# --------------------------------------------------------------------------- NUS-WIDE


@dataclass
class NusImage:
    path: str  # 'actor/0001_2124494179.jpg'
    split: str | None  # 'train', 'test' or None (listed in Imagelist only)
    tags: set[str] = field(default_factory=set)
    concepts: set[str] = field(default_factory=set)
    urls: dict[str, str | None] = field(default_factory=dict)


@dataclass
class NusRelease:
    root: Path
    images: list[NusImage]
    tags: list[str]
    concepts: list[str]

    def by_path(self, path: str) -> NusImage:
        return next(im for im in self.images if im.path == path)


NUS_URL_FIELDS = ("URL_Large", "URL_Middle", "URL_Small", "URL_Original")


def default_nus_images() -> list[NusImage]:
    def urls(i: int, *, large: bool = True, middle: bool = True) -> dict[str, str | None]:
        base = f"http://farm1.static.flickr.com/1/{1000 + i}_abc"
        return {
            "URL_Large": f"{base}_b.jpg" if large else None,
            "URL_Middle": f"{base}_m.jpg" if middle else None,
            "URL_Small": f"{base}_t.jpg",
            "URL_Original": None,
        }

    return [
        NusImage("actor/0001_2124494179.jpg", "train", {"nature", "sky", "blue"}, {"sky"}, urls(1)),
        NusImage(
            "actor/0002_174174086.jpg",
            "test",
            {"blue", "red", "water"},
            {"water", "computer"},
            urls(2),
        ),
        NusImage(
            "airport/0003_1111.jpg",
            "train",
            {"airport", "bravo"},
            {"airport"},
            urls(3, large=False),
        ),
        NusImage("airport/0004_2222.jpg", "test", set(), set(), urls(4, large=False, middle=False)),
        NusImage("administrative_assistant/0002_258761806.jpg", "test", {"green"}, set(), urls(5)),
        NusImage("beach/0005_3333.jpg", "train", set(), {"beach"}, urls(6)),
        NusImage("beach/0006_4444.jpg", None, {"nature"}, {"beach"}, urls(7)),
        NusImage("zebra/0007_5555.jpg", "test", {"animal", "zebra"}, {"zebra", "animal"}, urls(8)),
    ]


def build_nus_wide(
    root: Path,
    images: list[NusImage] | None = None,
    *,
    crlf: bool = True,
    bom: bool = True,
    tag_sep: str = "\t",
    url_prefix: str = "C:\\ImageData\\Flickr\\",
    with_urls: bool = True,
) -> NusRelease:
    """A NUS-WIDE release with the real 1,000 tags / 81 concepts and ``images``."""
    images = default_nus_images() if images is None else images
    root = Path(root)
    tags = reference.nus_taglist1k()
    concepts = reference.nus_concepts81()
    # the real label lists, byte for byte (CRLF)
    (root / "NUS_WID_Tags").mkdir(parents=True, exist_ok=True)
    (root / "ConceptsList").mkdir(parents=True, exist_ok=True)
    (root / "NUS_WID_Tags/TagList1k.txt").write_bytes(
        reference.reference_path(reference.NUS_TAGLIST1K).read_bytes()
    )
    (root / "ConceptsList/Concepts81.txt").write_bytes(
        reference.reference_path(reference.NUS_CONCEPTS81).read_bytes()
    )

    def win(p: str) -> str:
        return p.replace("/", "\\")

    write_lines(
        root / "ImageList/Imagelist.txt", [win(im.path) for im in images], crlf=crlf, bom=bom
    )
    for split, name in (("train", "TrainImagelist.txt"), ("test", "TestImagelist.txt")):
        write_lines(
            root / "ImageList" / name,
            [win(im.path) for im in images if im.split == split],
            crlf=crlf,
        )
    rows = []
    for im in images:
        unknown = im.tags - set(tags)
        assert not unknown, unknown
        rows.append(tag_sep.join("1" if t in im.tags else "0" for t in tags) + tag_sep)
    write_lines(root / "NUS_WID_Tags/AllTags1k.txt", rows, crlf=crlf)
    for c in concepts:
        write_lines(
            root / f"Groundtruth/AllLabels/Labels_{c}.txt",
            ["1" if c in im.concepts else "0" for im in images],
            crlf=crlf,
        )
    if with_urls:
        header = "     Photo_file                         Photo_id   " + "   ".join(
            ("URL_Large", "URL_Middle", "URL_Small", "URL_Original")
        )
        lines = [header]
        for i, im in enumerate(images):
            vals = [im.urls.get(f) or "null" for f in NUS_URL_FIELDS]
            lines.append(f"  {url_prefix}{win(im.path)}   {9000 + i}   " + "  ".join(vals))
        write_lines(root / "NUS-WIDE-urls.txt", lines, crlf=crlf)
    return NusRelease(root, images, tags, concepts)


# --------------------------------------------------------------------------- Open Images


IMAGES_HEADER = [
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
]
ANN_HEADER = ["ImageID", "Source", "LabelName", "Confidence"]


def oi_class_descriptions_path() -> Path | None:
    p = reference.shared_data_dir() / reference.OI_CLASS_DESCRIPTIONS
    return p if p.is_file() else None


@dataclass
class OIRelease:
    root: Path
    train_images: list[str]
    test_images: list[str]
    train_ann: list[tuple[str, str, str]]  # (ImageID, MID, "0"/"1")
    test_ann: list[tuple[str, str, str]]
    seen: list[str]
    unseen: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

    def images_file(self, split: str) -> Path:
        return (
            self.root
            / f"{split}/{split}-images-{'with-labels-' if split == 'train' else ''}with-rotation.csv"
        )

    def ann_file(self, split: str) -> Path:
        return self.root / f"{split}/{split}-annotations-human-imagelabels.csv"


def _image_row(image_id: str, subset: str, i: int) -> list[str]:
    return [
        image_id,
        subset,
        f"https://c{i % 9}.staticflickr.com/1/{i}/{image_id}_o.jpg",
        f"https://www.flickr.com/photos/x/{i}",
        "https://creativecommons.org/licenses/by/2.0/",
        "https://www.flickr.com/people/x/",
        "Some, Author",  # comma inside a quoted field
        'A "quoted" title',
        str(1000 + i),
        f"md5{i:05d}base64==",
        "" if i % 2 else f"https://c1.staticflickr.com/1/{i}_z.jpg",
        "" if i % 3 else "0.0",
    ]


def build_open_images(
    root: Path,
    *,
    n_train: int = 12,
    n_test: int = 30,
    crlf: bool = True,
    bom: bool = True,
    derive_counts: bool = False,
) -> OIRelease:
    """An Open Images v4 release with the real class lists and a small annotation set.

    Every one of the 400 reference unseen labels occurs in the test annotations. With
    ``derive_counts`` the test set has 402 images and unseen label r (reference order) is
    annotated on 402 - r of them, so that ranking by annotated-image count reproduces the
    reference order exactly; distractor candidates get fewer annotations.
    """
    desc = oi_class_descriptions_path()
    assert desc is not None, "needs shared/data/open-images-v4/class-descriptions.csv"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "class-descriptions.csv").write_bytes(desc.read_bytes())  # CRLF-mixed, quoted
    (root / "classes-trainable.txt").write_bytes(
        reference.reference_path(reference.OI_TRAINABLE).read_bytes()
    )
    seen = reference.oi_trainable()
    unseen = reference.oi_unseen_400()
    candidates = reference.oi_unseen_candidates_2594()
    unseen_set = set(unseen)
    other_cands = [m for m in candidates if m not in unseen_set]
    seen_set, cand_set = set(seen), set(candidates)
    names = dict(csv.reader(desc.open(encoding="utf-8", newline="")))
    non_candidates = [m for m in names if m not in seen_set and m not in cand_set][:3]

    if derive_counts:
        n_test = 402
    train_ids = [f"{i:016x}"[-16:] for i in range(0xA000, 0xA000 + n_train)]
    test_ids = [f"{i:016x}"[-16:] for i in range(0xB000, 0xB000 + n_test)]

    # ---- train annotations: seen labels, duplicates, distractors
    anole = "/m/01vqj0"  # ' Anole' in class-descriptions (leading space)
    by_name: dict[str, list[str]] = {}
    for m in seen:
        by_name.setdefault(names[m].strip(), []).append(m)
    dup_names = next(ms for ms in by_name.values() if len(ms) > 1)[:2]  # same display name
    train_ann: list[tuple[str, str, str]] = []
    for k, img in enumerate(train_ids[:-2]):  # last two: one only non-seen, one unannotated
        train_ann.append((img, seen[k], "1"))
        train_ann.append((img, seen[k + 1], "0"))
        train_ann.append((img, seen[-1 - k], "1" if k % 2 else "0"))
    train_ann.append((train_ids[0], anole, "1"))
    train_ann.append((train_ids[0], unseen[0], "1"))  # unseen label in train → stays 0
    train_ann.append((train_ids[1], other_cands[0], "1"))  # non-trainable, ignored
    # duplicate rows (another Source), one conflicting → positive wins
    train_ann.append((train_ids[1], seen[2], "1"))  # (train_ids[1], seen[2], "0") already there
    train_ann.append((train_ids[2], seen[2], "1"))  # agrees with the first row
    train_ann.append((train_ids[-2], non_candidates[0], "1"))  # image with no seen annotation
    train_ann.append((train_ids[3], dup_names[0], "1"))
    train_ann.append((train_ids[3], dup_names[1], "0"))

    # ---- test annotations
    test_ann: list[tuple[str, str, str]] = []
    if derive_counts:
        for r, mid in enumerate(unseen):
            for i in range(402 - r):
                test_ann.append((test_ids[i], mid, "1" if (i + r) % 3 else "0"))
        for j, mid in enumerate(other_cands[:4] + non_candidates[:1]):
            for i in range(2 if j < 2 else 1):
                test_ann.append((test_ids[i + 5], mid, "1"))
        test_ann.append((test_ids[0], seen[0], "1"))
    else:
        for k, mid in enumerate(unseen):
            test_ann.append((test_ids[k % (n_test - 2)], mid, "1" if k % 3 else "0"))
        for k in range(n_test - 2):
            test_ann.append((test_ids[k], seen[k], "1"))
            test_ann.append((test_ids[k], seen[100 + k], "0"))
        test_ann.append((test_ids[0], other_cands[0], "1"))  # candidate not in the 400
        test_ann.append((test_ids[1], non_candidates[1], "0"))  # not a candidate at all
        test_ann.append((test_ids[2], seen[102], "1"))  # conflicts with its "0": positive wins
        test_ann.append((test_ids[2], seen[2], "1"))  # agreeing duplicate
        # image annotated only outside the label space → kept, all-zero row
        test_ann.append((test_ids[n_test - 2], non_candidates[2], "1"))
        # test_ids[-1]: listed, never annotated → not a test row

    sources = ["verification", "crowdsource-verification"]
    for split, ids, anns in (("train", train_ids, train_ann), ("test", test_ids, test_ann)):
        rows = [IMAGES_HEADER] + [_image_row(i, split, n) for n, i in enumerate(ids)]
        name = f"{split}-images-{'with-labels-' if split == 'train' else ''}with-rotation.csv"
        write_csv(root / split / name, rows, crlf=crlf, bom=bom)
        ann_rows = [ANN_HEADER] + [
            [img, sources[n % 2], mid, conf] for n, (img, mid, conf) in enumerate(anns)
        ]
        write_csv(
            root / split / f"{split}-annotations-human-imagelabels.csv",
            ann_rows,
            crlf=crlf,
            bom=bom,
        )
    # a validation split the parser must ignore
    write_csv(
        root / "validation/validation-annotations-human-imagelabels.csv",
        [ANN_HEADER, ["ffffffffffffffff", "verification", seen[0], "1"]],
        crlf=crlf,
    )
    return OIRelease(
        root,
        train_ids,
        test_ids,
        train_ann,
        test_ann,
        seen,
        unseen,
        {
            "anole": anole,
            "dup_names": dup_names,
            "other_cands": other_cands,
            "non_candidates": non_candidates,
            "names": names,
        },
    )


# --------------------------------------------------------------------------- MS-COCO

COCO_CATEGORIES: list[tuple[int, str]] = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]  # fmt: skip


@dataclass
class CocoRelease:
    root: Path
    images: dict[str, list[dict[str, Any]]]  # split -> image dicts (id, file_name, coco_url)
    labels: dict[str, dict[str, set[int]]]  # split -> file_name -> category ids

    def instances(self, split: str) -> Path:
        sub = "train2014" if split == "train" else "val2014"
        return self.root / "annotations" / f"instances_{sub}.json"


def build_coco(root: Path, *, bom: bool = False, indent: int | None = None) -> CocoRelease:
    """COCO 2014 instances files with the real 80 categories and a handful of images.

    Per split: images with seen-only, unseen-only, mixed, outside-65-only (traffic light=10)
    and no annotations; one crowd annotation.
    """
    root = Path(root)
    cats = [{"supercategory": "x", "id": i, "name": n} for i, n in COCO_CATEGORIES]
    # (label sets by category id) — 1 person seen, 5 airplane unseen, 10 traffic light outside
    plans = {
        "train": [{1, 3}, {5}, {1, 5, 17}, {10}, set(), {90}],
        "test": [{1, 3}, {5}, {1, 5, 17}, {10}, set(), {90, 87}],
    }
    images: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, dict[str, set[int]]] = {}
    for split, sub in (("train", "train2014"), ("test", "val2014")):
        imgs, anns, lab = [], [], {}
        for k, cats_here in enumerate(plans[split]):
            iid = 100 + k * 7 + (0 if split == "train" else 1)
            fname = f"COCO_{sub}_{iid:012d}.jpg"
            imgs.append(
                {
                    "license": 1,
                    "file_name": fname,
                    "coco_url": f"http://images.cocodataset.org/{sub}/{fname}",
                    "height": 480,
                    "width": 640,
                    "id": iid,
                }
            )
            lab[fname] = set(cats_here)
            for n, cid in enumerate(sorted(cats_here)):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": iid,
                        "category_id": cid,
                        "iscrowd": 1 if (k == 0 and n == 0) else 0,
                        "area": 100.0,
                        "bbox": [0, 0, 10, 10],
                    }
                )
            if k == 2:  # a second instance of the same category
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 1, "iscrowd": 0})
        obj = {"info": {}, "images": imgs, "annotations": anns, "categories": cats}
        path = root / "annotations" / f"instances_{sub}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(obj, indent=indent).encode()
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
        images[split] = imgs
        labels[split] = lab
    return CocoRelease(root, images, labels)


# --------------------------------------------------------------------------- VOC2007

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


@dataclass
class VocRelease:
    root: Path
    main: Path
    values: dict[str, dict[str, dict[str, int]]]  # voc split -> class -> image id -> -1/0/1
    ids: dict[str, list[str]]


def build_voc(root: Path, *, crlf: bool = True, with_split_lists: bool = True) -> VocRelease:
    """VOCdevkit/VOC2007/ImageSets/Main with 5 trainval and 4 test images."""
    root = Path(root)
    main = root / "VOCdevkit/VOC2007/ImageSets/Main"
    ids = {"trainval": ["000005", "000007", "000009", "000012", "000016"],
           "test": ["000001", "000002", "000003", "000004"]}  # fmt: skip
    values: dict[str, dict[str, dict[str, int]]] = {}
    for split, split_ids in ids.items():
        values[split] = {}
        for ci, cls in enumerate(VOC_CLASSES):
            vals = {}
            for ii, img in enumerate(split_ids):
                v = -1
                if (ci + ii) % 7 == 0:
                    v = 1
                elif (ci * 3 + ii) % 11 == 0:
                    v = 0
                vals[img] = v
            values[split][cls] = vals
            # the release pads positives/difficult with a space: "000005  1" / "000005 -1"
            write_lines(
                main / f"{cls}_{split}.txt",
                [f"{img} {v:2d}" for img, v in vals.items()],
                crlf=crlf,
            )
        if with_split_lists:
            write_lines(main / f"{split}.txt", split_ids, crlf=crlf)
    return VocRelease(root, main, values, ids)
