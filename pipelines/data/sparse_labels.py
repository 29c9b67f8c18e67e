"""Sparse label storage for splits too large for a dense int8 matrix.

Open Images v4 train has ~9M images x 7,586 label columns: 64 GB dense, but only ~17M
annotated (image, label) cells. Such a split is stored next to the dense files of the
prepared-dataset contract (``pipelines/data/prepared.py``) as ``<split>_sparse.npz``::

    image_ids   unicode (N,)       row order
    row         int32 (nnz,)       row index into image_ids
    col         int32 (nnz,)       label column (seen first, then unseen — as labels.json)
    value       int8 (nnz,)        +1 / -1 (cells not listed are 0 = unknown)
    shape       int64 (2,)         (N, S+U)

Entries are sorted by (row, col) with no duplicates, so a batch of rows is a contiguous
slice. ``meta.json`` gets a ``sparse_splits`` entry per sparse split.

:class:`SparsePreparedDataset` is a :class:`PreparedDataset` that also carries sparse splits
and writes everything in one atomic directory swap. It is an extension of the contract in
``prepared.py`` that the lead may fold in there; nothing here changes the dense files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.prepared import PreparedDataset, Split, staged_output
from pipelines.io import load_npz, read_json, save_npz, write_json

SPARSE_SUFFIX = "_sparse.npz"


def sparse_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}{SPARSE_SUFFIX}"


@dataclass
class SparseLabels:
    """Labels of one split in coordinate form (see module docstring)."""

    image_ids: np.ndarray
    row: np.ndarray
    col: np.ndarray
    value: np.ndarray
    n_labels: int
    _indptr: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=str)
        self.row = np.ascontiguousarray(self.row, dtype=np.int32)
        self.col = np.ascontiguousarray(self.col, dtype=np.int32)
        self.value = np.asarray(self.value)
        if self.value.dtype != np.int8:
            raise TypeError(f"value must be int8, got {self.value.dtype}")
        if not (len(self.row) == len(self.col) == len(self.value)):
            raise ValueError("row, col and value must have the same length")
        n = len(self.image_ids)
        if len(self.row):
            if self.row.min() < 0 or self.row.max() >= n:
                raise ValueError(f"row index out of range for {n} images")
            if self.col.min() < 0 or self.col.max() >= self.n_labels:
                raise ValueError(f"col index out of range for {self.n_labels} labels")
            if not np.isin(self.value, (-1, 1)).all():
                raise ValueError("sparse values must be -1 or +1 (0 is implicit)")
            key = self.row.astype(np.int64) * self.n_labels + self.col
            if not (np.diff(key) > 0).all():
                raise ValueError("entries must be sorted by (row, col) without duplicates")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_coo(
        cls,
        image_ids: np.ndarray,
        row: np.ndarray,
        col: np.ndarray,
        value: np.ndarray,
        n_labels: int,
    ) -> SparseLabels:
        """Build from unsorted coordinates; duplicate cells are merged (positive wins).

        Zero values are dropped.
        """
        row = np.asarray(row, dtype=np.int64)
        col = np.asarray(col, dtype=np.int64)
        value = np.asarray(value, dtype=np.int8)
        keep = value != 0
        row, col, value = row[keep], col[keep], value[keep]
        key = row * n_labels + col
        order = np.lexsort((-value.astype(np.int16), key))  # by key, positive first
        key, value = key[order], value[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        key, value = key[first], value[first]
        return cls(image_ids, key // n_labels, key % n_labels, value, n_labels)

    @classmethod
    def from_dense(cls, split: Split) -> SparseLabels:
        r, c = np.nonzero(split.labels)
        return cls(split.image_ids, r, c, split.labels[r, c], split.labels.shape[1])

    # ------------------------------------------------------------------ access

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.image_ids), self.n_labels)

    @property
    def nnz(self) -> int:
        return len(self.value)

    @property
    def indptr(self) -> np.ndarray:
        """CSR row pointer (N+1,): entries of row i are ``indptr[i]:indptr[i+1]``."""
        if self._indptr is None:
            counts = np.bincount(self.row, minlength=len(self.image_ids))
            self._indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._indptr

    def to_dense(self, rows: np.ndarray | slice | list[int] | None = None) -> np.ndarray:
        """Dense int8 labels of ``rows`` (all rows if None) — use for batches."""
        if rows is None:
            out = np.zeros(self.shape, dtype=np.int8)
            out[self.row, self.col] = self.value
            return out
        if isinstance(rows, slice):
            rows = np.arange(len(self.image_ids))[rows]
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.n_labels), dtype=np.int8)
        if len(rows) == 0:
            return out
        ptr = self.indptr
        starts, stops = ptr[rows], ptr[rows + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        if total == 0:
            return out
        out_rows = np.repeat(np.arange(len(rows)), lengths)
        # entry positions: for each requested row, starts[i] + 0..lengths[i]-1
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.repeat(starts, lengths) + offsets
        out[out_rows, self.col[idx]] = self.value[idx]
        return out

    # ------------------------------------------------------------ array-like row access
    # A SparseLabels stands in for the dense (N, C) int8 matrix wherever code only reads
    # rows, as the trainer does batch by batch: ``labels[rows]`` and ``labels[rows, cols]``
    # return dense int8 arrays of just those rows.
    dtype = np.dtype(np.int8)
    ndim = 2

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, int | np.integer):
            return self.to_dense([int(rows)])[0][cols]
        return self.to_dense(self._row_indices(rows))[:, cols]

    def _row_indices(self, rows: Any) -> np.ndarray | slice:
        if isinstance(rows, slice):
            return rows
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if len(rows) != len(self.image_ids):
                raise IndexError(f"boolean mask of {len(rows)} rows for {len(self.image_ids)}")
            return np.flatnonzero(rows)
        return rows.astype(np.int64)

    def take(self, rows: Any) -> SparseLabels:
        """The sub-matrix of ``rows`` (indices or a boolean mask), still sparse."""
        rows = self._row_indices(rows)
        if isinstance(rows, slice):
            rows = np.arange(len(self.image_ids))[rows]
        ptr = self.indptr
        starts, lengths = ptr[rows], ptr[rows + 1] - ptr[rows]
        total = int(lengths.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.repeat(starts, lengths) + offsets
        new_row = np.repeat(np.arange(len(rows)), lengths)
        return SparseLabels(
            self.image_ids[rows], new_row, self.col[idx], self.value[idx], self.n_labels
        )

    def digest_update(self, h: Any) -> None:
        """Feed the matrix to a hashlib object (what ``labels.tobytes()`` is for dense)."""
        h.update(np.asarray(self.shape, np.int64).tobytes())
        for a in (self.row, self.col, self.value):
            h.update(np.ascontiguousarray(a).tobytes())

    def to_split(self) -> Split:
        return Split(self.image_ids, self.to_dense())

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        save_npz(
            path,
            image_ids=self.image_ids,
            row=self.row,
            col=self.col,
            value=self.value,
            shape=np.asarray(self.shape, dtype=np.int64),
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SparseLabels:
        a = load_npz(path)
        return cls(a["image_ids"], a["row"], a["col"], a["value"], int(a["shape"][1]))

    def summary(self, file_name: str) -> dict[str, Any]:
        return {
            "file": file_name,
            "n_images": int(len(self.image_ids)),
            "n_labels": int(self.n_labels),
            "nnz": int(self.nnz),
            "n_positive": int((self.value == 1).sum()),
            "n_negative": int((self.value == -1).sum()),
            "format": "coo row/col int32, value int8 (+1/-1; absent = 0), sorted by (row, col)",
        }


def load_sparse_split(root: str | Path, split: str) -> SparseLabels | None:
    path = sparse_path(root, split)
    return SparseLabels.load(path) if path.exists() else None


@dataclass
class SparsePreparedDataset(PreparedDataset):
    """A PreparedDataset whose large splits are stored sparsely (``<split>_sparse.npz``)."""

    sparse_splits: dict[str, SparseLabels] = field(default_factory=dict)

    def save(self, root: str | Path) -> Path:
        root = Path(root)
        C = self.label_space.n_seen + self.label_space.n_unseen
        for name, sp in self.sparse_splits.items():
            if sp.n_labels != C:
                raise ValueError(f"{name}: {sp.n_labels} label columns, label space has {C}")
            if name in self.splits:
                raise ValueError(f"split {name!r} is both dense and sparse")
        with staged_output(root) as tmp:
            PreparedDataset.save(self, tmp)
            summaries = {}
            for name, sp in self.sparse_splits.items():
                sp.save(sparse_path(tmp, name))
                summaries[name] = sp.summary(sparse_path(tmp, name).name)
            if summaries:
                meta = read_json(tmp / "meta.json")
                meta["sparse_splits"] = summaries
                meta["counts"] = {
                    **meta.get("counts", {}),
                    **{k: v["n_images"] for k, v in summaries.items()},
                }
                write_json(tmp / "meta.json", meta)
        return root

    @classmethod
    def load(cls, root: str | Path) -> SparsePreparedDataset:
        base = PreparedDataset.load(root)  # holds sparse splits as Split(ids, SparseLabels)
        dense = {k: v for k, v in base.splits.items() if isinstance(v.labels, np.ndarray)}
        sparse = {k: v.labels for k, v in base.splits.items() if k not in dense}
        for path in sorted(Path(root).glob(f"*{SPARSE_SUFFIX}")):
            name = path.name[: -len(SPARSE_SUFFIX)]
            if name not in sparse and name not in dense:
                sparse[name] = SparseLabels.load(path)
        return cls(base.name, base.label_space, dense, base.manifest, base.meta, sparse)

    def split_labels(self, split: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Dense labels of ``rows`` of a split, whichever way it is stored."""
        if split in self.splits:
            labels = self.splits[split].labels
            return labels if rows is None else labels[rows]
        return self.sparse_splits[split].to_dense(rows)

    def split_image_ids(self, split: str) -> np.ndarray:
        if split in self.splits:
            return self.splits[split].image_ids
        return self.sparse_splits[split].image_ids
