"""Frozen-backbone feature cache: computed once per (dataset, backbone, split), streamed.

Layout of ``<features>/<dataset>/<backbone>/<split>/``::

    index.json                 n, dim, n_patches, patches, shards [{file, start, n}], backbone
    shard-00000.safetensors    global (n, D) fp16 unit-norm, patches (n, P, D) fp16

Every frozen-backbone method reads these instead of running the backbone each epoch.
Reading never loads a split whole (NUS-WIDE's train patches are ~30 GB, Open Images'
~1.8 TB):

- :class:`FeatureStore` memory-maps each shard's tensors at the data offsets of its
  safetensors header (validated against the file size when the store opens, so a
  truncated shard is an error before any training). ``store.global_`` and
  ``store.patches`` are :class:`FeatureColumn` s: indexing one (an int, a slice, an index
  array) reads only those rows, and a column that is never indexed is never read: patch
  tokens are read by the methods that use them only. After each read the touched pages
  are released from the process (``madvise(MADV_DONTNEED)``; the OS page cache keeps
  them), because a map's resident pages count in the process's RSS: a shuffled epoch
  over a map otherwise leaves the whole split resident (measured in bench/bench_scale.py).
- :meth:`FeatureStore.batches` serves whole batches through a ``torch`` DataLoader over
  the shards (the trainer's batches; ``num_workers`` processes read in parallel).
- :class:`OnlineFeatures` has the same interface but runs the frozen backbone on the
  split's images as they are asked for (decoded by the DataLoader's workers), rounding
  to fp16 as the cache does: the mode for caches that cannot fit a node (``features:
  online`` in params). On the same images it gives the cached values to fp16 rounding.
- :class:`Features` is the same interface over tensors already in memory (tests, tools).

A cache written with ``patches=False`` (``datasets.<name>.features.patches: false``) holds
the global embeddings only; asking it for patch tokens is an error that says to run the
cell online.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import mmap
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipelines.io import atomic_path, read_json, write_json

if TYPE_CHECKING:
    from pipelines.data.images import ImageSource
    from pipelines.vlp.backbone import Backbone

SHARD_SIZE = 4096
PARTS = ("global", "patches")  # tensor names in a shard, in the order a digest reads them
FeatureMode = Literal["cached", "online"]
Part = str
Rows = dict[Part, torch.Tensor]
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_PAGE = mmap.PAGESIZE
_MARGIN = 2**20  # bytes released beyond the rows read (> the kernel's fault-around window)


# ----------------------------------------------------------------------------- indexing
def row_indices(key: Any, n: int) -> tuple[np.ndarray, bool]:
    """(int64 row numbers, whether ``key`` was a single int) for a column key: an int, a
    slice, or a 1-D int / bool sequence (numpy, torch, list). Negative ints count from the
    end, as in numpy."""
    if isinstance(key, int | np.integer) or (isinstance(key, torch.Tensor) and key.ndim == 0):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        return np.array([i % n], dtype=np.int64), True
    if isinstance(key, slice):
        return np.arange(*key.indices(n), dtype=np.int64), False
    if isinstance(key, torch.Tensor):
        key = key.detach().cpu().numpy()
    idx = np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"boolean index of shape {idx.shape} for {n} rows")
        return np.flatnonzero(idx).astype(np.int64), False
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise IndexError(f"rows must be an int, a slice or a 1-D int array, got {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(idx < 0, idx + n, idx), False


class FeatureColumn:
    """One tensor of a split (``global`` (N, D) or ``patches`` (N, P, D)), read on demand.

    Indexing returns a CPU fp16 tensor of just those rows, as a tensor's would.
    :meth:`float` reads the whole column (meant for the small global embeddings).
    """

    def __init__(self, owner: RowReader, part: Part):
        self._owner, self._part = owner, part

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._owner), *self._owner.row_shape(self._part)))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16

    def __len__(self) -> int:
        return len(self._owner)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, key: Any) -> torch.Tensor:
        idx, single = row_indices(key, len(self._owner))
        out = self._owner.rows(idx, (self._part,))[self._part]
        return out[0] if single else out

    def float(self) -> torch.Tensor:
        return self[:].float()

    def __repr__(self) -> str:
        return f"FeatureColumn({self._part!r}, shape={tuple(self.shape)}, float16)"


class RowReader(abc.ABC):
    """What every feature source shares: ``rows`` (implemented by each), batches, digests."""

    image_ids: np.ndarray

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def rows(self, index: np.ndarray, parts: Sequence[Part] = PARTS) -> Rows:
        """{part: CPU fp16 tensor of the rows ``index`` (int64, any order, repeats allowed)}."""

    @property
    def has_patches(self) -> bool:
        return True

    @abc.abstractmethod
    def row_shape(self, part: Part) -> tuple[int, ...]:
        """The shape of one row of ``part`` ((D,) for global, (P, D) for patches)."""

    def batches(
        self,
        batch_indices: Sequence[Sequence[int]],
        *,
        parts: Sequence[Part] = PARTS,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, Rows]]:
        """(row index (B,), {part: (B, ...) fp16}) per batch of ``batch_indices``, in order,
        served by a DataLoader (``num_workers`` reader processes)."""
        loader = DataLoader(
            _RowBatches(self, tuple(parts)),
            sampler=[list(map(int, b)) for b in batch_indices],
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        yield from loader

    def digest_update(self, h: Any, parts: Sequence[Part] = PARTS) -> None:
        """Feed ``h`` the bytes of ``parts``, whole column by column (what a checkpoint's
        data fingerprint hashes), a bounded number of rows at a time."""
        step = 1024
        for part in parts:
            for start in range(0, len(self), step):
                rows = np.arange(start, min(start + step, len(self)), dtype=np.int64)
                h.update(self.rows(rows, (part,))[part].numpy().tobytes())


class _RowBatches(Dataset):
    """One item = one whole batch of rows (the sampler yields lists of row numbers)."""

    def __init__(self, reader: RowReader, parts: tuple[Part, ...]):
        self.reader, self.parts = reader, parts

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, Rows]:
        idx = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(idx), self.reader.rows(idx, self.parts)


# ---------------------------------------------------------------------------- in memory
@dataclass
class Features(RowReader):
    """Features of one split already in memory (fp16 tensors): tests and small tools."""

    global_: torch.Tensor  # (N, D)
    patches: torch.Tensor  # (N, P, D)
    image_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.global_.shape[0])

    def rows(self, index: np.ndarray, parts: Sequence[Part] = PARTS) -> Rows:
        t = torch.as_tensor(np.asarray(index, dtype=np.int64))
        src = {"global": self.global_, "patches": self.patches}
        return {p: src[p][t] for p in parts}

    @property
    def has_patches(self) -> bool:
        return self.patches.ndim == 3 and self.patches.shape[0] == len(self)

    def row_shape(self, part: Part) -> tuple[int, ...]:
        return tuple((self.global_ if part == "global" else self.patches).shape[1:])


# ------------------------------------------------------------------------------ on disk
def _rebuild(split_dir: Path) -> str:
    """Which stage rebuilds a feature cache (``<features>/<dataset>/<backbone>/<split>``)."""
    ds, bb = split_dir.parent.parent.name, split_dir.parent.name
    return (
        f"it is made by stage features@{ds}@{bb}: rebuild it with `ovml stage features {ds} {bb}`"
    )


@dataclass(frozen=True)
class _Tensor:
    offset: int  # absolute byte offset of the tensor's data in the file
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return 2 * math.prod(self.shape[1:])


def read_safetensors_header(path: Path) -> tuple[dict[str, _Tensor], int]:
    """The fp16 tensors of a safetensors file ({name: offset + shape}) and the file size,
    checked against each other without reading the data. ValueError says what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"header length {n} does not fit the file's {size} bytes")
        try:
            meta = json.loads(fh.read(n))
        except ValueError as err:
            raise ValueError(f"unreadable header ({err})") from None
    out: dict[str, _Tensor] = {}
    for name, spec in meta.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or spec.get("dtype") != "F16":
            raise ValueError(f"tensor {name!r} is not float16 ({spec})")
        shape = tuple(int(x) for x in spec["shape"])
        begin, end = (int(x) for x in spec["data_offsets"])
        if end - begin != 2 * math.prod(shape) or 8 + n + end > size:
            raise ValueError(
                f"tensor {name!r} needs bytes {8 + n + begin}..{8 + n + end}, file has {size}"
            )
        out[name] = _Tensor(8 + n + begin, shape)
    return out, size


class _Shard:
    """One shard file, memory-mapped on first use; reads copy rows out, then release the
    pages they touched from the process (the OS page cache keeps them)."""

    def __init__(self, path: Path, tensors: dict[str, _Tensor]):
        self.path, self.tensors = path, tensors
        self._map: mmap.mmap | None = None

    def open(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def read_into(self, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        """Rows ``local`` (sorted, distinct) of tensor ``part`` into ``out`` (len(local), ...)."""
        t = self.tensors[part]
        mm = self.open()
        arr = np.frombuffer(mm, dtype=np.float16, count=math.prod(t.shape), offset=t.offset)
        arr = arr.reshape(t.shape)
        lo, hi = int(local[0]), int(local[-1]) + 1
        if hi - lo == len(local):  # one contiguous run (sequential reads, predict)
            np.copyto(out, arr[lo:hi])
        else:
            np.take(arr, local, axis=0, out=out, mode="clip")  # checked by rows()
        del arr  # no view may outlive the read (the map can then be closed)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            # the kernel maps cached pages around each fault too (fault-around): release
            # a margin on both sides of the rows read, within the file
            start = max(0, t.offset + lo * t.row_bytes - _MARGIN) // _PAGE * _PAGE
            end = min(len(mm), t.offset + hi * t.row_bytes + _MARGIN)
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def __getstate__(self) -> dict:  # DataLoader workers started by spawn reopen the map
        return {"path": self.path, "tensors": self.tensors, "_map": None}


class ShardedStore(RowReader):
    """Rows of a split spread over safetensors shards listed by ``index.json``.

    ``names`` are the tensor names every shard must hold; ``optional`` ones may be absent
    from every shard (a global-only cache). At most ``max_open`` shards stay mapped.
    """

    kind = "feature cache"

    def __init__(
        self,
        split_dir: Path,
        names: Sequence[str],
        optional: Sequence[str] = (),
        *,
        max_open: int = 64,
    ):
        self.split_dir = split_dir = Path(split_dir)
        index = split_dir / "index.json"
        if not index.exists():
            raise FileNotFoundError(
                f"{split_dir}: no {self.kind} here (index.json missing); {self._rebuild()}"
            )
        try:
            self.info = info = read_json(index)
            entries = [(str(s["file"]), int(s["n"])) for s in info["shards"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: unreadable ({err}); {self._rebuild()}") from None
        self.image_ids = np.asarray(info.get("image_ids", []))
        self.shards: list[_Shard] = []
        starts = [0]
        present: set[str] | None = None
        for file, n in entries:
            path = split_dir / Path(file).name  # a shard's file name only, never a path
            tensors = self._open_shard(path, n, names, optional)
            have = set(tensors) & set(optional)
            if present is not None and have != present:
                raise ValueError(
                    f"{path}: holds {sorted(have)} of {sorted(optional)}, the shards before "
                    f"it {sorted(present)}; {self._rebuild()}"
                )
            present = have
            self.shards.append(_Shard(path, tensors))
            starts.append(starts[-1] + n)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.n = int(starts[-1])
        if len(self.image_ids) and len(self.image_ids) != self.n:
            raise ValueError(
                f"{index}: {len(self.image_ids)} image ids for {self.n} rows; {self._rebuild()}"
            )
        self.parts_present = (*names, *sorted(present or ()))
        self.row_shapes: dict[str, tuple[int, ...]] = {
            p: self.shards[0].tensors[p].shape[1:] if self.shards else ()
            for p in self.parts_present
        }
        self._max_open = max_open
        self._open: OrderedDict[int, None] = OrderedDict()

    def _rebuild(self) -> str:
        return _rebuild(self.split_dir)

    def _open_shard(
        self, path: Path, n: int, names: Sequence[str], optional: Sequence[str]
    ) -> dict[str, _Tensor]:
        try:
            tensors, _ = read_safetensors_header(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: feature shard missing; {self._rebuild()}") from None
        except ValueError as err:
            raise ValueError(f"{path}: corrupt feature shard ({err}); {self._rebuild()}") from None
        for name in names:
            if name not in tensors:
                raise ValueError(f"{path}: no tensor {name!r} in the shard; {self._rebuild()}")
        for name in (*names, *optional):
            if name in tensors and tensors[name].shape[0] != n:
                raise ValueError(
                    f"{path}: {tensors[name].shape[0]} rows of {name!r}, index.json says {n}; "
                    + self._rebuild()
                )
        return tensors

    def __len__(self) -> int:
        return self.n

    def _missing(self, part: Part) -> Exception:
        return KeyError(f"{self.split_dir}: the {self.kind} holds no {part!r} tensor")

    def rows(self, index: np.ndarray, parts: Sequence[Part] = PARTS) -> Rows:
        index = np.asarray(index, dtype=np.int64)
        for p in parts:
            if p not in self.parts_present:
                raise self._missing(p)
        if len(index) and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"{self.split_dir}: row index out of range for {self.n} rows")
        uniq, inverse = np.unique(index, return_inverse=True)
        in_order = len(uniq) == len(index) and (
            len(index) < 2 or bool(np.all(index[1:] > index[:-1]))
        )
        shard_of = np.searchsorted(self.starts, uniq, side="right") - 1
        bounds = np.searchsorted(shard_of, np.arange(len(self.shards) + 1))
        out: Rows = {}
        for p in parts:
            buf = np.empty((len(uniq), *self.row_shapes[p]), dtype=np.float16)
            for s in np.flatnonzero(bounds[1:] > bounds[:-1]):
                a, b = bounds[s], bounds[s + 1]
                self._touch(int(s))
                self.shards[s].read_into(p, uniq[a:b] - self.starts[s], buf[a:b])
            out[p] = torch.from_numpy(buf if in_order else buf[inverse])
        return out

    def _touch(self, s: int) -> None:
        """Keep at most ``max_open`` shards mapped (least recently read closed first)."""
        self._open[s] = None
        self._open.move_to_end(s)
        while len(self._open) > self._max_open:
            old, _ = self._open.popitem(last=False)
            self.shards[old].close()

    def row_shape(self, part: Part) -> tuple[int, ...]:
        if part not in self.parts_present:
            raise self._missing(part)
        return self.row_shapes[part]

    def column(self, part: Part) -> FeatureColumn:
        self.row_shape(part)  # a missing tensor is an error here, not at the first read
        return FeatureColumn(self, part)

    def digest_update(self, h: Any, parts: Sequence[Part] = PARTS) -> None:
        """The same bytes as :meth:`RowReader.digest_update`, read shard by shard in
        bounded chunks straight from the files."""
        chunk = 16 * 2**20
        for part in parts:
            if part not in self.parts_present:
                raise self._missing(part)
            for shard in self.shards:
                t = shard.tensors[part]
                with open(shard.path, "rb") as fh:
                    fh.seek(t.offset)
                    left = t.shape[0] * t.row_bytes
                    while left:
                        data = fh.read(min(chunk, left))
                        if not data:
                            raise ValueError(f"{shard.path}: truncated; {self._rebuild()}")
                        h.update(data)
                        left -= len(data)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state


class FeatureStore(ShardedStore):
    """A split of the feature cache, streamed: ``global_`` and ``patches`` columns."""

    def __init__(self, split_dir: Path, **kw):
        super().__init__(split_dir, ("global",), ("patches",), **kw)

    @property
    def has_patches(self) -> bool:
        return "patches" in self.parts_present

    def _missing(self, part: Part) -> Exception:
        if part == "patches":
            return ValueError(
                f"{self.split_dir}: this feature cache holds no patch tokens (written with "
                "datasets.<name>.features.patches: false); run the variant online "
                "(features: online in params) or rebuild the cache with patches"
            )
        return super()._missing(part)

    @property
    def global_(self) -> FeatureColumn:
        return self.column("global")

    @property
    def patches(self) -> FeatureColumn:
        return self.column("patches")


def load_features(split_dir: Path) -> FeatureStore:
    """Open one split of the feature cache for streaming (reads headers only)."""
    return FeatureStore(Path(split_dir))


# ---------------------------------------------------------------------------- online
class _ImageRows(Dataset):
    """One item = one batch of decoded uint8 images (read by DataLoader workers)."""

    def __init__(self, source: ImageSource, size: int):
        self.source, self.size = source, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(rows, dtype=np.int64)
        imgs = self.source.get(idx, self.size)
        return torch.from_numpy(idx), torch.from_numpy(np.ascontiguousarray(imgs))


def tower_dtype(backbone: Backbone) -> torch.dtype | None:
    """The dtype the image tower takes its pixels in: that of its first convolution or
    linear layer (the patch embedding). A backbone built with ``precision: bf16`` (or fp16)
    has those in bf16 while open_clip keeps embeddings and norms in float32
    (``convert_weights_to_lp``), so the first parameter does not tell."""
    tower = getattr(backbone.model, "visual", backbone.model)
    for m in tower.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            return m.weight.dtype
    return next((p.dtype for p in tower.parameters() if p.is_floating_point()), None)


class OnlineEncoder(RowReader):
    """Rows computed by a frozen encoder from a split's images when they are asked for.

    Subclasses say what ``encode`` returns ({part: (B, ...)}). Values are rounded to fp16
    as a cache stores them, computed without autocast (a trainer's bf16 region must not
    change them) and without gradients. The last batch is kept, so reading two columns
    of the same rows (global, then patches) encodes the images once.
    """

    parts_present: tuple[Part, ...] = PARTS

    def __init__(self, backbone: Backbone, source: ImageSource):
        self.backbone, self.source = backbone, source
        self.image_ids = np.asarray(source.image_ids)
        self._last: tuple[bytes, Rows] | None = None
        self._shapes: dict[Part, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.source)

    @abc.abstractmethod
    def encode(self, pixels: torch.Tensor) -> Rows:
        """{part: (B, ...)} of one batch of normalised pixels."""

    def _encode_uint8(self, imgs: np.ndarray | torch.Tensor) -> Rows:
        bb = self.backbone
        arr = imgs.numpy() if isinstance(imgs, torch.Tensor) else imgs
        with torch.no_grad(), torch.autocast(bb.device.type, enabled=False):
            pixels = bb.uint8_to_tensor(arr)
            out = self.encode(pixels.to(tower_dtype(bb) or pixels.dtype))
        return {k: v.to(torch.float16) for k, v in out.items()}

    def rows(self, index: np.ndarray, parts: Sequence[Part] = PARTS) -> Rows:
        index = np.asarray(index, dtype=np.int64)
        key = index.tobytes()
        if self._last is None or self._last[0] != key:
            imgs = self.source.get(index, self.backbone.image_size)
            self._last = (key, {k: v.cpu() for k, v in self._encode_uint8(imgs).items()})
        return {p: self._last[1][p] for p in parts}

    def batches(
        self,
        batch_indices: Sequence[Sequence[int]],
        *,
        parts: Sequence[Part] = PARTS,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, Rows]]:
        """Images decoded by a DataLoader (``num_workers`` processes), encoded here on the
        backbone's device; tensors stay on that device."""
        loader = DataLoader(
            _ImageRows(self.source, self.backbone.image_size),
            sampler=[list(map(int, b)) for b in batch_indices],
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        for index, imgs in loader:
            out = self._encode_uint8(imgs)
            yield index, {p: out[p] for p in parts}

    def digest_update(self, h: Any, parts: Sequence[Part] = PARTS) -> None:
        """Online rows are a function of the images and the backbone (hashed apart)."""
        h.update(f"online:{type(self).__name__}:{','.join(parts)}\n".encode())
        h.update("\n".join(map(str, self.image_ids)).encode())

    def column(self, part: Part) -> FeatureColumn:
        return FeatureColumn(self, part)

    def row_shape(self, part: Part) -> tuple[int, ...]:
        """From one encoded blank image, once."""
        if part not in self._shapes:
            size = self.backbone.image_size
            probe = self._encode_uint8(np.zeros((1, size, size, 3), np.uint8))
            self._shapes.update({k: tuple(v.shape[1:]) for k, v in probe.items()})
        return self._shapes[part]


class OnlineFeatures(OnlineEncoder):
    """The feature cache's ``global_`` / ``patches``, computed by the frozen backbone."""

    def encode(self, pixels: torch.Tensor) -> Rows:
        g, p = self.backbone.encode_images(pixels)
        return {"global": g, "patches": p}

    @property
    def global_(self) -> FeatureColumn:
        return self.column("global")

    @property
    def patches(self) -> FeatureColumn:
        return self.column("patches")


def open_features(
    mode: FeatureMode, split_dir: Path, *, backbone: Backbone, images: ImageSource
) -> RowReader:
    """The cached store of ``split_dir``, or the online encoder over ``images``."""
    if mode == "online":
        return OnlineFeatures(backbone, images)
    return load_features(split_dir)


def digest(reader: RowReader, parts: Iterable[Part] = PARTS) -> str:
    h = hashlib.sha256()
    reader.digest_update(h, tuple(parts))
    return h.hexdigest()


# ----------------------------------------------------------------------------- writing
def extract_features(
    backbone: Backbone,
    source: ImageSource,
    out_dir: Path,
    *,
    batch_size: int = 256,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
    desc: str = "features",
    patches: bool = True,
    num_workers: int = 0,
) -> dict:
    """Run the frozen backbone over ``source`` and write fp16 shards atomically.

    ``patches=False`` stores the global embeddings only (a cache whose patch tokens would
    not fit; cells that read patches then run online). ``num_workers`` DataLoader
    processes decode the images while the backbone runs.
    """
    if shard_size % batch_size:
        shard_size = max(batch_size, shard_size - shard_size % batch_size)
    order = [
        list(range(i, min(i + batch_size, len(source)))) for i in range(0, len(source), batch_size)
    ]
    parts = PARTS if patches else ("global",)
    online = OnlineFeatures(backbone, source).batches(order, parts=parts, num_workers=num_workers)
    bar = tqdm(total=len(source), desc=desc, disable=not progress, unit="img")

    def counted() -> Iterator[Rows]:
        for index, rows in online:
            bar.update(len(index))
            yield rows

    try:
        return write_feature_cache(
            out_dir,
            counted(),
            image_ids=[str(x) for x in source.image_ids],
            backbone_name=backbone.name,
            shard_size=shard_size,
            transform=tf.record(backbone.image_size)
            if (tf := getattr(source, "transform", None)) is not None
            else None,
        )
    finally:
        bar.close()


def write_feature_cache(
    out_dir: Path,
    batches: Iterable[Rows],
    *,
    image_ids: Sequence[str],
    backbone_name: str,
    shard_size: int = SHARD_SIZE,
    transform: dict | None = None,
) -> dict:
    """Write batches of rows ({"global": (B, D)[, "patches": (B, P, D)]}, any dtype, kept
    as fp16) as a feature cache split, atomically: shards of ``shard_size`` rows plus
    ``index.json`` (which records the image ``transform`` the rows were read with).
    At most one shard is held in memory."""
    shards: list[dict] = []
    buf: dict[str, list[torch.Tensor]] = {}
    n_done = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)

        def flush() -> None:
            if not buf.get("global"):
                return
            tensors = {p: torch.cat(ts).contiguous() for p, ts in buf.items()}
            name = f"shard-{len(shards):05d}.safetensors"
            save_file(tensors, str(tmp / name))
            start = sum(s["n"] for s in shards)
            shards.append({"file": name, "start": start, "n": int(tensors["global"].shape[0])})
            buf.clear()

        for rows in batches:
            if set(rows) - set(PARTS) or "global" not in rows:
                raise ValueError(f"feature rows must be global [+ patches], got {sorted(rows)}")
            for p, t in rows.items():
                buf.setdefault(p, []).append(t.to("cpu", torch.float16))
            n_done += int(rows["global"].shape[0])
            if sum(x.shape[0] for x in buf["global"]) >= shard_size:
                flush()
        flush()
        if n_done != len(image_ids):
            raise ValueError(f"{out_dir}: {n_done} rows written for {len(image_ids)} image ids")
        first = read_safetensors_header(tmp / shards[0]["file"])[0] if shards else {}
        info = {
            "n": n_done,
            "dim": int(first["global"].shape[1]) if first else 0,
            "n_patches": int(first["patches"].shape[1]) if "patches" in first else 0,
            "patches": "patches" in first,
            "backbone": backbone_name,
            "transform": transform,
            "shards": shards,
            "image_ids": [str(x) for x in image_ids],
        }
        write_json(tmp / "index.json", info)
    return info


def stored_bytes(split_dir: Path) -> int:
    """Bytes of a split's shards on disk (for reports and benchmarks)."""
    return sum(p.stat().st_size for p in Path(split_dir).glob("shard-*.safetensors"))
