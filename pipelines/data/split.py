"""One split's image ids and labels: dense (:class:`Split`, an int8 matrix) or sparse
(:class:`SparseLabels`, coordinates, for splits too large to be dense; the file format is
in pipelines/data/sparse_labels.py).

A leaf of pipelines/data (it imports only pipelines/io.py): pipelines/data/prepared.py
reads both kinds of split and sparse_labels.py writes them, without a circle.
``prepared`` and ``sparse_labels`` re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.io import load_npz, save_npz


@dataclass
class Split:
    image_ids: np.ndarray  # unicode array (N,)
    labels: np.ndarray  # int8 (N, S+U), or a SparseLabels for a split stored sparsely

    def __post_init__(self) -> None:
        if self.labels.ndim != 2 or len(self.image_ids) != self.labels.shape[0]:
            raise ValueError(
                f"labels shape {self.labels.shape} does not match {len(self.image_ids)} image ids"
            )
        if not isinstance(self.labels, np.ndarray):  # SparseLabels: validated on construction
            return
        if self.labels.dtype != np.int8:
            raise TypeError(f"labels must be int8, got {self.labels.dtype}")
        bad = ~np.isin(self.labels, (-1, 0, 1))
        if bad.any():
            raise ValueError("labels must only contain -1, 0 and +1")


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
