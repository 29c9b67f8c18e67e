"""The prepared-dataset contract every dataset module writes and every later stage reads.

A prepared dataset is a directory::

    labels.json        {"dataset": str, "seen": [{"id", "name"}...], "unseen": [...], ...}
    train.npz          image_ids (unicode array), labels (int8, N x (S+U))
    test.npz           idem
    manifest.parquet   image_id, url, md5 (nullable; hex or base64 as published), split
    meta.json          counts, conventions (which images were dropped and why), sources

Labels follow DESIGN.md: +1 positive, -1 negative, 0 unknown; columns are the seen labels
first, then the unseen ones. Training rows carry 0 (unknown) in every unseen column.
Label ``id`` is the stable key (Open Images MID, NUS-WIDE tag, COCO category id as a
string); ``name`` is the display name used to build prompts and may repeat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.split import SparseLabels, Split
from pipelines.io import clean_stale_tmp, load_npz, owner_tag, read_json, save_npz, write_json

SPLITS = ("train", "test")
OWN_FILES = ".ovml-prepared.json"  # which files of the folder a prepare wrote
_NOT_FOREIGN = {OWN_FILES, ".ovml-stage.json"}


def own_files(root: Path) -> set[str]:
    """Files (relative paths) the last prepare wrote into ``root``."""
    try:
        return set(read_json(Path(root) / OWN_FILES)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def foreign_files(root: Path) -> list[str]:
    """Files in ``root`` that no prepare wrote (the user's, another dataset's, images)."""
    root = Path(root)
    if not root.is_dir():
        return [root.name] if root.exists() else []
    mine = own_files(root) | _NOT_FOREIGN
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            rel = str(p.relative_to(root))
            if rel not in mine:
                found.append(rel)
    return found


@contextlib.contextmanager
def staged_output(root: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success move each file written there into
    ``root`` (one atomic rename per file, the file list last), remove the files the previous
    prepare wrote that this one did not, and leave every other file of ``root`` alone."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{root.name}.{owner_tag()}.", suffix=".tmp", dir=root.parent)
    )
    try:
        yield tmp
        before = own_files(root)
        written = sorted(
            str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != OWN_FILES
        )
        root.mkdir(parents=True, exist_ok=True)
        for rel in written:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, root / rel)
        for rel in sorted(before - set(written)):
            if (root / rel).is_file():
                (root / rel).unlink()
        write_json(root / OWN_FILES, {"files": written})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Label:
    id: str
    name: str


@dataclass
class LabelSpace:
    """Seen and unseen labels, in GZSL column order (seen first)."""

    seen: list[Label]
    unseen: list[Label]

    @property
    def all(self) -> list[Label]:
        return [*self.seen, *self.unseen]

    @property
    def n_seen(self) -> int:
        return len(self.seen)

    @property
    def n_unseen(self) -> int:
        return len(self.unseen)

    def names(self) -> list[str]:
        return [lab.name for lab in self.all]

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": [vars(lab) for lab in self.seen],
            "unseen": [vars(lab) for lab in self.unseen],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LabelSpace:
        return cls(
            seen=[Label(**d) for d in obj["seen"]], unseen=[Label(**d) for d in obj["unseen"]]
        )


@dataclass
class PreparedDataset:
    name: str
    label_space: LabelSpace
    splits: dict[str, Split]
    manifest: Any = None  # polars.DataFrame (image_id, url, md5, split) or None
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, root: str | Path) -> Path:
        """Write the dataset's own files (each one atomically) and nothing else: other
        files in ``root`` stay. A split with no image is an error."""
        root = Path(root)
        C = self.label_space.n_seen + self.label_space.n_unseen
        self.check_not_empty()
        with staged_output(root) as tmp:
            write_json(tmp / "labels.json", {"dataset": self.name, **self.label_space.to_json()})
            for split_name, split in self.splits.items():
                if split.labels.shape[1] != C:
                    raise ValueError(
                        f"{split_name}: {split.labels.shape[1]} label columns, label space has {C}"
                    )
                if not isinstance(split.labels, np.ndarray):  # SparseLabels
                    split.labels.save(tmp / f"{split_name}_sparse.npz")
                    continue
                save_npz(
                    tmp / f"{split_name}.npz",
                    image_ids=np.asarray(split.image_ids, dtype=str),
                    labels=split.labels,
                )
            if self.manifest is not None:
                self.manifest.write_parquet(tmp / "manifest.parquet")
            counts = {s: int(len(sp.image_ids)) for s, sp in self.splits.items()}
            write_json(
                tmp / "meta.json",
                {
                    "dataset": self.name,
                    "n_seen": self.label_space.n_seen,
                    "n_unseen": self.label_space.n_unseen,
                    "counts": counts,
                    **self.meta,
                },
            )
        return root

    def check_not_empty(self) -> None:
        for split_name, split in self.splits.items():
            if len(split.image_ids) == 0:
                missing = self.meta.get("missing_images")
                hint = (
                    f" ({missing.get(split_name)} image(s) not found under images_dir="
                    f"{missing.get('images_dir')}, dropped: {missing.get('dropped')})"
                    if isinstance(missing, dict)
                    else ""
                )
                raise ValueError(
                    f"split {split_name!r} keeps 0 images{hint}; check images_dir and the "
                    "drop_* options"
                )

    @classmethod
    def load(cls, root: str | Path) -> PreparedDataset:
        root = Path(root)
        if not (root / "labels.json").exists():
            raise FileNotFoundError(
                f"{root} is not a prepared dataset (no labels.json); run `ovml data prepare` first"
            )
        lab = read_json(root / "labels.json")
        splits = {}
        for split_name in SPLITS:
            path = root / f"{split_name}.npz"
            if path.exists():
                try:
                    arrays = load_npz(path)
                    splits[split_name] = Split(arrays["image_ids"], arrays["labels"])
                except Exception as err:  # truncated zip, missing array, wrong shape
                    name = root.parent.name if root.name == "_prepared" else root.name  # toyworld
                    raise ValueError(
                        f"{path}: unreadable ({type(err).__name__}: {err}); it is an output of "
                        f"stage dataset@{name}: rebuild it with `ovml stage dataset {name}` "
                        "(or `ovml data prepare` for a folder of your own)"
                    ) from None
            elif (root / f"{split_name}_sparse.npz").exists():
                # too large to be dense (Open Images train): rows are made dense on access
                sparse = SparseLabels.load(root / f"{split_name}_sparse.npz")
                splits[split_name] = Split(sparse.image_ids, sparse)
        manifest = None
        if (root / "manifest.parquet").exists():
            import polars as pl

            manifest = pl.read_parquet(root / "manifest.parquet")
        meta = read_json(root / "meta.json") if (root / "meta.json").exists() else {}
        return cls(lab["dataset"], LabelSpace.from_json(lab), splits, manifest, meta)
