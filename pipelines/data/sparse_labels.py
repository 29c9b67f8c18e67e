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

import numpy as np

from pipelines.data.prepared import PreparedDataset, staged_output
from pipelines.data.split import (  # noqa: F401 (re-exported)
    SPARSE_SUFFIX,
    SparseLabels,
    Split,
    load_sparse_split,
    sparse_path,
)
from pipelines.io import read_json, write_json


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
