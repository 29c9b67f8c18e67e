"""Where a prepared dataset's pixels come from, behind one small interface.

- toyworld: ``images_<split>.npy`` arrays (uint8, N x H x W x 3), memory-mapped;
- real datasets: a folder of image files keyed by image_id (``<root>/<image_id>``), or
  the webdataset shards written by the downloader (pipelines/data/download.py), found
  through its ledger.

``batches`` yields uint8 arrays made square at the backbone's input size by the dataset's
declared :class:`ImageTransform` (``squash`` or ``center_crop``, params ``datasets.<name>.
transform``), so the feature extractor and end-to-end training read every source the same
way, and the feature cache records which transform made it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageTransform:
    """How a photo becomes the square input of a backbone (the papers' "resized to 224 x 224").

    - ``squash``: the whole image resized to ``size`` x ``size``, aspect ratio not kept
      (RCNn's and BiAM's code, QKS / C2SRT / CoMC Section 4.1): nothing is cut off;
    - ``center_crop``: the short side resized to ``size / crop_pct``, then the centre
      ``size`` x ``size`` kept (CLIP's own preprocessing at ``crop_pct`` 1; MKT's eval
      transform at 0.875, i.e. 256 then 224): about 12.5% of each long side of a 4:3 photo
      is dropped at ``crop_pct`` 1, and the objects there with it.

    ``size`` None = the size the reader asks for (the backbone's input size).
    """

    mode: Literal["squash", "center_crop"] = "squash"
    size: int | None = None
    crop_pct: float = 1.0
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in ("squash", "center_crop"):
            raise ValueError(f"image transform: unknown mode {self.mode!r}")
        if not 0 < self.crop_pct <= 1 or (self.mode == "squash" and self.crop_pct != 1):
            raise ValueError("image transform: crop_pct is in (0, 1], and only for center_crop")

    def output_size(self, size: int) -> int:
        return int(self.size or size)

    def apply(self, img: Image.Image, size: int) -> np.ndarray:
        """uint8 (S, S, 3) of a PIL image, S = :meth:`output_size`."""
        s = self.output_size(size)
        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        img = img.convert("RGB")
        if self.mode == "squash":
            return np.asarray(img.resize((s, s), resample), dtype=np.uint8)
        short = max(s, round(s / self.crop_pct))
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample)
        w, h = img.size
        left, top = (w - s) // 2, (h - s) // 2
        return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)

    def keeps(self, shape: tuple[int, ...]) -> bool:
        """Whether an (H, W, 3) array would only be rescaled uniformly (a square image
        squashed, or centre-cropped whole): the backbone's own resize then does it."""
        return shape[0] == shape[1] and (self.mode == "squash" or self.crop_pct == 1)

    def record(self, size: int) -> dict[str, Any]:
        """What the feature cache's index.json and a cell's metrics.json store."""
        return {**asdict(self), "size": self.output_size(size)}


def from_config(cfg: Any) -> ImageTransform:
    """The transform of a params ``transform:`` block (pipelines/config.py TransformConfig)."""
    return ImageTransform(**cfg.model_dump())


class ImageSource(Protocol):
    image_ids: np.ndarray
    transform: ImageTransform

    def __len__(self) -> int: ...

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        """uint8 (len(indices), size, size, 3)."""
        ...


class NpyImages:
    """The generated worlds' arrays. Square images the transform would only rescale are
    returned at their stored size (the backbone resizes them); others are transformed."""

    def __init__(self, path: Path, image_ids: np.ndarray, transform: ImageTransform | None = None):
        self.array = np.load(path, mmap_mode="r")
        if len(self.array) != len(image_ids):
            raise ValueError(f"{path}: {len(self.array)} images but {len(image_ids)} image ids")
        self.image_ids = image_ids
        self.transform = transform or ImageTransform()

    def __len__(self) -> int:
        return len(self.image_ids)

    def get(self, indices: Sequence[int], size: int) -> np.ndarray:
        arr = np.asarray(self.array[np.asarray(indices)])
        if self.transform.keeps(arr.shape[1:]):
            return arr
        return np.stack([self.transform.apply(Image.fromarray(a), size) for a in arr])


class FolderImages:
    """Image files under a root folder, addressed by image_id (a relative path)."""

    def __init__(self, root: Path, image_ids: np.ndarray, transform: ImageTransform | None = None):
        self.root = Path(root).resolve()
        self.image_ids = image_ids
        self.transform = transform or ImageTransform()
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
        s = self.transform.output_size(size)
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            with Image.open(self._path(str(self.image_ids[i]))) as img:
                out[k] = self.transform.apply(img, size)
        return out


class ShardImages:
    """Images in the downloader's webdataset shards, located through its ledger(s).

    ``root`` is a downloader output folder (``ledger.parquet`` + ``shards/``) or a folder
    of such folders (``chunk-NNNN/``, what the download stage writes). Member offsets are
    indexed once per shard, then every read is a seek. Rows that did not download raise
    :class:`MissingImageError`; :meth:`available` says which ones are there beforehand.
    """

    def __init__(
        self,
        root: Path,
        image_ids: np.ndarray,
        _where: dict | None = None,
        transform: ImageTransform | None = None,
    ):
        import polars as pl

        self.root = Path(root)
        self.transform = transform or ImageTransform()
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
        return ShardImages(self.root, self.image_ids[keep], self._where, self.transform)

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

        s = self.transform.output_size(size)
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            with Image.open(io.BytesIO(self.read_bytes(str(self.image_ids[i])))) as img:
                out[k] = self.transform.apply(img, size)
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
    dataset_dir: Path,
    split: str,
    image_ids: np.ndarray,
    images_root: str | None,
    transform: ImageTransform | None = None,
) -> ImageSource:
    """The image source of a prepared dataset split, read through ``transform``."""
    npy = Path(dataset_dir) / f"images_{split}.npy"
    if npy.exists():
        return NpyImages(npy, image_ids, transform)
    if images_root is None:
        raise FileNotFoundError(
            f"{dataset_dir}: no images_{split}.npy and no `images:` folder configured for this "
            "dataset in params.yaml (download the images with `ovml data download` first)"
        )
    root = Path(images_root)
    if (root / "ledger.parquet").exists() or any(root.glob("chunk-*/ledger.parquet")):
        return ShardImages(root, image_ids, transform=transform)
    return FolderImages(Path(images_root), image_ids, transform)
