"""Locate and load the reference label lists (the field's standard splits).

Lookup order for a file such as ``"nus-wide/Concepts81.txt"``:

1. ``$OVML_SHARED_DATA/<name>`` when the environment variable is set,
2. the copy shipped inside the package (``pipelines/data/reference_lists/<name>``),
3. ``<repo>/../shared/data/<name>`` (the project's shared data directory).

The package copies are byte-for-byte copies of the shared files, so (2) and (3) agree; (1)
lets a user point at another copy without touching the install.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.data.splits import ParseError, read_lines, read_list

ENV_VAR = "OVML_SHARED_DATA"
PACKAGE_DIR = Path(__file__).resolve().parent / "reference_lists"
REPO_ROOT = Path(__file__).resolve().parents[2]

NUS_CONCEPTS81 = "nus-wide/Concepts81.txt"
NUS_TAGLIST1K = "nus-wide/TagList1k.txt"
NUS_SEEN_925 = "nus-wide/seen_925.txt"
NUS_UNSEEN_81 = "nus-wide/unseen_81.txt"
NUS_TEST_IMAGES = "nus-wide/test_images_107859.txt"  # shared only (2.9 MB)
FLICKR_PLACEHOLDER = "nus-wide/flickr_unavailable_placeholder.jpg"
OI_CLASS_DESCRIPTIONS = "open-images-v4/class-descriptions.csv"  # shared only
OI_TRAINABLE = "open-images-v4/classes-trainable.txt"
OI_UNSEEN_2594 = "open-images-v4/unseen_labels_2594.txt"
OI_TOP_400 = "open-images-v4/top_400_unseen.csv"
OI_UNSEEN_400_MIDS = "open-images-v4/unseen_400_mids.txt"
OI_UNSEEN_400_NAMES = "open-images-v4/unseen_400_names.txt"
COCO_ZSL_SPLIT = "coco/zsl_split_48_17.json"


def shared_data_dir() -> Path:
    """The shared reference-data directory: ``$OVML_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def search_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env))
    dirs.append(PACKAGE_DIR)
    dirs.append(REPO_ROOT.parent / "shared" / "data")
    return dirs


def reference_path(name: str) -> Path:
    """Path of reference file ``name`` (e.g. ``"nus-wide/Concepts81.txt"``)."""
    for d in search_dirs():
        p = d / name
        if p.is_file():
            return p
    looked = ", ".join(str(d) for d in search_dirs())
    raise FileNotFoundError(
        f"reference file {name} not found (looked in {looked}); set {ENV_VAR} to the "
        "directory holding the project's shared/data files"
    )


def has_reference(name: str) -> bool:
    try:
        reference_path(name)
    except FileNotFoundError:
        return False
    return True


@lru_cache(maxsize=32)
def _cached_list(path: str, what: str) -> tuple[str, ...]:
    return tuple(read_list(Path(path), what))


def load_list(name: str, what: str = "entry") -> list[str]:
    """A one-per-line reference list (BOM/CRLF tolerant), stripped."""
    return list(_cached_list(str(reference_path(name)), what))


# --------------------------------------------------------------------------- NUS-WIDE


def nus_concepts81() -> list[str]:
    return load_list(NUS_CONCEPTS81, "concept")


def nus_taglist1k() -> list[str]:
    return load_list(NUS_TAGLIST1K, "tag")


def nus_seen_925() -> list[str]:
    return load_list(NUS_SEEN_925, "tag")


def nus_unseen_81() -> list[str]:
    return load_list(NUS_UNSEEN_81, "concept")


def flickr_placeholder() -> bytes | None:
    """The image Flickr serves for a deleted photo (None if the reference file is absent)."""
    try:
        return reference_path(FLICKR_PLACEHOLDER).read_bytes()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- Open Images


def oi_trainable() -> list[str]:
    return load_list(OI_TRAINABLE, "MID")


def oi_unseen_candidates_2594() -> list[str]:
    """LESA's 2,594 candidate unseen MIDs, in the order of its unseen_labels.pkl."""
    return load_list(OI_UNSEEN_2594, "MID")


def oi_top400_indices() -> list[tuple[int, int]]:
    """``(line_number, index)`` pairs of top_400_unseen.csv (indices into the 2,594 list)."""
    path = reference_path(OI_TOP_400)
    out = []
    for lineno, raw in enumerate(read_lines(path), start=1):
        tok = raw.strip().split(",")[0].strip()
        if not tok:
            raise ParseError(path, lineno, "empty line in the top-400 index list")
        try:
            out.append((lineno, int(tok)))
        except ValueError:
            raise ParseError(path, lineno, f"{tok!r} is not an integer index") from None
    return out


def oi_unseen_400() -> list[str]:
    """The 400 unseen MIDs, resolved from top_400_unseen.csv + unseen_labels_2594.txt.

    Cross-checked against the resolved copy unseen_400_mids.txt when it is available.
    """
    cands = oi_unseen_candidates_2594()
    top_path = reference_path(OI_TOP_400)
    mids = []
    for lineno, idx in oi_top400_indices():
        if not 0 <= idx < len(cands):
            raise ParseError(
                top_path, lineno, f"index {idx} out of range for {len(cands)} candidate labels"
            )
        mids.append(cands[idx])
    if len(set(mids)) != len(mids):
        raise ParseError(top_path, None, "the top-400 list selects a label twice")
    if has_reference(OI_UNSEEN_400_MIDS):
        resolved = load_list(OI_UNSEEN_400_MIDS, "MID")
        if resolved != mids:
            raise ParseError(
                reference_path(OI_UNSEEN_400_MIDS),
                None,
                "disagrees with top_400_unseen.csv + unseen_labels_2594.txt",
                "restore the reference files from shared/data",
            )
    return mids


# --------------------------------------------------------------------------- MS-COCO


def coco_zsl_split() -> dict[str, Any]:
    """The 48/17 split: ``{"classes": [80 names], "seen": [48 idx], "unseen": [17 idx]}``.

    Indices are into the 80 categories in ascending category-id order.
    """
    path = reference_path(COCO_ZSL_SPLIT)
    obj = json.loads(path.read_text(encoding="utf-8-sig"))
    classes = list(obj["classes"])
    seen = [int(i) for i in obj["seen_48"]["indices"]]
    unseen = [int(i) for i in obj["unseen_17"]["indices"]]
    if len(classes) != 80 or len(seen) != 48 or len(unseen) != 17 or set(seen) & set(unseen):
        raise ParseError(path, None, "not a 48/17 split of the 80 COCO classes")
    for key, idx in (("seen_48", seen), ("unseen_17", unseen)):
        names = obj[key].get("names")
        if names is not None and names != [classes[i] for i in idx]:
            raise ParseError(path, None, f"{key}: names do not match indices")
    return {"classes": classes, "seen": seen, "unseen": unseen}
