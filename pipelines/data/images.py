"""Where a prepared dataset's pixels come from, behind one small interface.

- toyworld: ``images_<split>.npy`` arrays (uint8, N x H x W x 3), memory-mapped;
- real datasets: a folder of image files keyed by image_id (``<root>/<image_id>``), or
  the webdataset shards written by the downloader (pipelines/data/download.py), found
  through its ledger.

``batches`` yields uint8 arrays resized to a square of the backbone's input size, so the
feature extractor and end-to-end training read every source the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image


class ImageSource(Protocol):
    image_ids: np.ndarray

    def __len__(self) -> int: ...

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        """uint8 (len(indices), size, size, 3)."""
        ...


def _square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop (CLIP's eval preprocessing)."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


class NpyImages:
    """toyworld's arrays; images are returned at their stored size (the backbone resizes)."""

    def __init__(self, path: Path, image_ids: np.ndarray):
        self.array = np.load(path, mmap_mode="r")
        if len(self.array) != len(image_ids):
            raise ValueError(f"{path}: {len(self.array)} images but {len(image_ids)} image ids")
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        return np.asarray(self.array[np.asarray(indices)])


class FolderImages:
    """Image files under a root folder, addressed by image_id (a relative path)."""

    def __init__(self, root: Path, image_ids: np.ndarray):
        self.root = Path(root).resolve()
        self.image_ids = image_ids
        self._names: dict[str, Path] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def _path(self, image_id: str) -> Path:
        path = (self.root / image_id).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"image id {image_id!r} escapes the image folder {self.root}")
        if "/" not in image_id and not path.exists():
            return self._by_name().get(image_id, path)
        return path

    def _by_name(self) -> dict[str, Path]:
        """Files one folder down, by name, for ids that are bare file names (COCO's
        ``COCO_val2014_….jpg`` under ``val2014/``, as the official zips extract); listed
        once, on the first id not found directly under the root."""
        if self._names is None:
            names: dict[str, Path] = {}
            for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for f in sub.iterdir():
                    names.setdefault(f.name, f)
            self._names = names
        return self._names

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            with Image.open(self._path(str(self.image_ids[i]))) as img:
                out[k] = _square(img, size)
        return out


class ShardImages:
    """Images in the downloader's webdataset shards, located through its ledger(s).

    ``root`` is a downloader output folder (``ledger.parquet`` + ``shards/``) or a folder
    of such folders (``chunk-NNNN/``, what the download stage writes). Member offsets are
    indexed once per shard, then every read is a seek. Rows that did not download raise
    :class:`MissingImageError`; :meth:`available` says which ones are there beforehand.
    """

    def __init__(self, root: Path, image_ids: np.ndarray, _where: dict | None = None):
        import polars as pl

        self.root = Path(root)
        if _where is None:
            ledgers = [self.root / "ledger.parquet"]
            if not ledgers[0].exists():
                ledgers = sorted(self.root.glob("chunk-*/ledger.parquet"))
            if not ledgers:
                raise FileNotFoundError(
                    f"{self.root}: no ledger.parquet; run `ovml data download` first"
                )
            _where = {}
            for ledger in ledgers:
                ok = pl.read_parquet(ledger).filter(pl.col("status") == "ok")
                for image_id, shard, key in zip(
                    ok["image_id"], ok["shard"], ok["key"], strict=True
                ):
                    # the shard's file name only: never a path taken from data
                    _where[image_id] = (ledger.parent / "shards" / Path(shard).name, key)
        self._where: dict[str, tuple[Path, str]] = _where
        self._members: dict[Path, dict[str, tuple[int, int]]] = {}
        self.image_ids = image_ids

    def subset(self, keep: np.ndarray) -> ShardImages:
        return ShardImages(self.root, self.image_ids[keep], self._where)

    def __len__(self) -> int:
        return len(self.image_ids)

    def available(self) -> np.ndarray:
        return np.array([str(i) in self._where for i in self.image_ids], dtype=bool)

    def _index(self, shard: Path) -> dict[str, tuple[int, int]]:
        if shard not in self._members:
            import tarfile

            with tarfile.open(shard) as tar:
                self._members[shard] = {
                    m.name.rsplit(".", 1)[0]: (m.offset_data, m.size)
                    for m in tar
                    if m.isfile() and not m.name.endswith(".json")
                }
        return self._members[shard]

    def read_bytes(self, image_id: str) -> bytes:
        if image_id not in self._where:
            raise MissingImageError(
                f"{image_id}: not downloaded (see the ledger under {self.root})"
            )
        shard, key = self._where[image_id]
        members = self._index(shard)
        if key not in members:
            raise MissingImageError(f"{image_id}: key {key} not found in {shard}")
        offset, size = members[key]
        with open(shard, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        import io

        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            with Image.open(io.BytesIO(self.read_bytes(str(self.image_ids[i])))) as img:
                out[k] = _square(img, size)
        return out


class MissingImageError(FileNotFoundError):
    """An image the split lists but the download did not get (a dead link)."""


def batches(
    source: ImageSource, batch_size: int, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, uint8 images) in order."""
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        yield idx, source.get(idx, size)


def open_images(
    dataset_dir: Path, split: str, image_ids: np.ndarray, images_root: str | None
) -> ImageSource:
    """The image source of a prepared dataset split."""
    npy = Path(dataset_dir) / f"images_{split}.npy"
    if npy.exists():
        return NpyImages(npy, image_ids)
    if images_root is None:
        raise FileNotFoundError(
            f"{dataset_dir}: no images_{split}.npy and no `images:` folder configured for this "
            "dataset in params.yaml (download the images with `ovml data download` first)"
        )
    root = Path(images_root)
    if (root / "ledger.parquet").exists() or any(root.glob("chunk-*/ledger.parquet")):
        return ShardImages(root, image_ids)
    return FolderImages(Path(images_root), image_ids)
