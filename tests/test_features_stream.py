"""Feature stores that stream (pipelines/vlp/features.py): exact rows and batches against
the concatenating loader they replace, bounded memory on a store larger than allowed to be
resident, global-only caches, corrupt shards, and the online mode (the frozen backbone
inside the loop) against the cached one."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipelines.train import Batch, Trainer, TrainModule, _chunks, _Source, trainable_state
from pipelines.vlp import clearclip as cc
from pipelines.vlp.features import (
    Features,
    FeatureStore,
    OnlineFeatures,
    digest,
    load_features,
    write_feature_cache,
)
from tests.test_train import TinyModule, fake_context


# ---------------------------------------------------------------------------- helpers
def old_load(split_dir: Path, names=("global", "patches")) -> dict[str, torch.Tensor]:
    """main's loader: every shard read whole, then concatenated (the reference)."""
    info = json.loads((split_dir / "index.json").read_text())
    loaded = [load_file(str(split_dir / s["file"])) for s in info["shards"]]
    return {n: torch.cat([t[n] for t in loaded]) for n in names}


def random_cache(out: Path, n: int, *, p: int = 7, d: int = 16, shard: int = 50, seed=0,
                 patches: bool = True) -> Path:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def rows():
        for i in range(0, n, 37):  # batches that straddle shard boundaries
            k = min(37, n - i)
            r = {"global": torch.randn(k, d, generator=gen)}
            if patches:
                r["patches"] = torch.randn(k, p, d, generator=gen)
            yield r

    ids = [f"im{i}" for i in range(n)]
    write_feature_cache(out, rows(), image_ids=ids, backbone_name="synthetic", shard_size=shard)
    return out


def cache_of(feats: Features, out: Path, shard: int) -> FeatureStore:
    """Write in-memory features as a cache split (what the features stage stores)."""
    n = len(feats)
    batches = (
        {"global": feats.global_[i : i + 8], "patches": feats.patches[i : i + 8]}
        for i in range(0, n, 8)
    )
    write_feature_cache(
        out, batches, image_ids=list(feats.image_ids), backbone_name="tiny", shard_size=shard
    )
    return load_features(out)


def mapped_resident_bytes(folder: Path) -> int:
    """Resident bytes of this process's memory maps of files under ``folder``
    (/proc/self/smaps): what a memory-mapped store holds in RAM, counted in its RSS."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[-1].startswith(str(folder))
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


# ------------------------------------------------------------------------- exact rows
def test_rows_equal_the_concatenating_loader(tmp_path):
    split = random_cache(tmp_path / "train", 230, shard=50)  # 5 shards, the last one short
    ref = old_load(split)
    store = load_features(split)
    assert len(store) == 230 and store.global_.shape == ref["global"].shape
    assert store.patches.shape == ref["patches"].shape and store.has_patches
    perm = np.random.default_rng(0).permutation(230)
    keys = [
        perm[:64],  # shuffled, across shards
        np.array([3, 3, 199, 3, 0, 229]),  # repeats, both ends
        [-1, -230, 5],  # negative, as numpy
        torch.tensor([49, 50, 51]),  # a shard boundary
        slice(40, 160),  # a contiguous run over three shards
        slice(None, None, 7),
        7,
        np.int64(-2),
        np.arange(230) % 3 == 0,  # a boolean mask
        np.array([], dtype=np.int64),
    ]
    for key in keys:
        k = torch.as_tensor(key) if isinstance(key, list | np.ndarray) else key
        for col, name in ((store.global_, "global"), (store.patches, "patches")):
            got, want = col[key], ref[name][k]
            assert got.dtype == torch.float16 and got.shape == want.shape, key
            assert torch.equal(got, want), key
    assert torch.equal(store.global_.float(), ref["global"].float())
    with pytest.raises(IndexError):
        store.global_[230]
    with pytest.raises(IndexError):
        store.patches[np.array([0, 231])]


def test_digest_is_the_old_trainer_digest(tmp_path):
    """The trainer's data fingerprint streams the same bytes it hashed from the loaded
    tensors, so checkpoints written before the change still resume."""
    split = random_cache(tmp_path / "train", 120, shard=32)
    ref = old_load(split)
    h = hashlib.sha256()
    h.update(ref["global"].contiguous().numpy().tobytes())
    h.update(ref["patches"].contiguous().numpy().tobytes())
    assert digest(load_features(split)) == h.hexdigest()
    mem = Features(ref["global"], ref["patches"], np.arange(120).astype(str))
    assert digest(mem) == h.hexdigest()


@pytest.mark.parametrize("workers", [0, 1])
def test_trainer_batches_equal_the_old_loader(tmp_path, workers):
    split = random_cache(tmp_path / "train", 150, shard=40)
    ref = old_load(split)
    order = [int(i) for i in np.random.default_rng(1).permutation(150)]
    batch_indices = _chunks(order, 16, False)
    src = _Source(
        "features", torch.device("cpu"), features=load_features(split), num_workers=workers
    )
    got = list(src.batches(batch_indices))
    assert len(got) == len(batch_indices)
    for b, idx in zip(got, batch_indices, strict=True):
        t = torch.as_tensor(idx)
        assert torch.equal(b.index, t)
        assert b.global_.dtype == torch.float32
        assert torch.equal(b.global_, ref["global"][t].float())
        assert torch.equal(b.patches, ref["patches"][t].float())


def test_training_on_the_store_is_bit_identical_to_training_in_memory(tmp_path):
    ctx = fake_context(tmp_path / "mem", n_train=40)
    mem = ctx.features("train")
    store = cache_of(mem, tmp_path / "cache" / "train", shard=16)  # 3 shards
    ctx_store = dataclasses.replace(
        ctx, workdir=tmp_path / "disk", load_features=lambda split: store, _cache={}
    )
    cfg = {"epochs": 2, "batch_size": 8, "lr": 1e-2}
    from pipelines.train import TrainConfig

    results = []
    for c in (ctx, ctx_store):
        torch.manual_seed(0)
        module = TinyModule(d=mem.patches.shape[-1])
        trainer = Trainer(TrainConfig(**cfg), c)
        trainer.fit(module)
        results.append((trainable_state(module), trainer.fingerprint["data"]))
    (w_mem, d_mem), (w_disk, d_disk) = results
    assert d_mem == d_disk
    assert w_mem.keys() == w_disk.keys()
    assert all(torch.equal(w_mem[k], w_disk[k]) for k in w_mem)


# ---------------------------------------------------------------------- bounded memory
def test_a_full_pass_never_holds_the_store(tmp_path):
    """96 MB of patches in 6 MB shards; a shuffled pass in batches of 64 (what the trainer
    does) may hold a few batches, never the split: neither in what Python allocates
    (tracemalloc sees numpy's buffers) nor in the pages of the shards' memory maps that
    are resident (they count in the RSS; without the release after each read a pass
    leaves the whole split resident)."""
    n, p, d = 1920, 49, 512
    split = random_cache(tmp_path / "big", n, p=p, d=d, shard=128)
    size = sum(f.stat().st_size for f in split.glob("shard-*.safetensors"))
    assert size > 90 * 2**20
    gc.collect()
    tracemalloc.start()
    try:
        store = load_features(split)
        order = np.random.default_rng(0).permutation(n)
        peak_mapped, checksum = 0, 0.0
        for i in range(0, n, 64):
            rows = store.rows(order[i : i + 64])
            checksum += float(rows["patches"][:, 0, 0].float().sum())
            peak_mapped = max(peak_mapped, mapped_resident_bytes(split))
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    batch_bytes = 64 * p * d * 2
    assert np.isfinite(checksum) and len(store._open) == len(store.shards) > 10
    assert traced_peak < 4 * batch_bytes, (traced_peak, batch_bytes)
    assert peak_mapped < size / 8, f"{peak_mapped >> 20} MiB of a {size >> 20} MiB store resident"


# ----------------------------------------------------------------------- global only
class GlobalHead(TrainModule):
    """Reads the global embedding only (as C2SRT without local features)."""

    feature_parts = ("global",)

    def __init__(self, d: int, n_labels: int):
        super().__init__()
        self.head = nn.Linear(d, n_labels)

    def forward(self, batch: Batch, *, seen_only: bool = True):
        assert batch.patches is None
        return self.head(batch.global_)

    def loss(self, outputs, targets):
        return ((outputs[:, : targets.shape[1]] - targets.float()) ** 2).mean()

    def scores(self, outputs):
        return outputs


def test_a_global_only_cache_serves_global_readers_and_refuses_patches(tmp_path):
    ctx = fake_context(tmp_path / "w", n_train=40)
    mem = ctx.features("train")
    batches = ({"global": mem.global_[i : i + 10]} for i in range(0, 40, 10))
    out = tmp_path / "features" / "fake" / "tiny" / "train"
    info = write_feature_cache(
        out, batches, image_ids=list(mem.image_ids), backbone_name="tiny", shard_size=16
    )
    assert info["patches"] is False and info["n_patches"] == 0
    store = load_features(out)
    assert not store.has_patches
    assert torch.equal(store.global_[:], mem.global_)
    with pytest.raises(ValueError, match="no patch tokens.*features: online"):
        _ = store.patches
    ctx2 = dataclasses.replace(ctx, load_features=lambda split: store, _cache={})
    from pipelines.train import TrainConfig

    cfg = TrainConfig(epochs=1, batch_size=8)
    Trainer(cfg, ctx2).fit(GlobalHead(mem.global_.shape[1], ctx.n_labels))
    ctx3 = dataclasses.replace(ctx2, workdir=tmp_path / "w3", _cache={})
    with pytest.raises(ValueError, match="no patch tokens"):
        Trainer(cfg, ctx3).fit(TinyModule(d=mem.patches.shape[-1]))


# ----------------------------------------------------------------------- bad shards
def test_a_corrupt_shard_is_an_error_at_open_naming_the_file(tmp_path):
    split = random_cache(tmp_path / "features" / "ds" / "bb" / "train", 100, shard=40)
    shard = split / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])  # truncated data
    with pytest.raises(ValueError, match=r"shard-00001.*features@ds@bb"):
        load_features(split)
    shard.write_bytes(b"\xff" * 16)  # a header length that cannot fit
    with pytest.raises(ValueError, match="shard-00001.*corrupt"):
        load_features(split)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.*missing"):
        load_features(split)
    shard.write_bytes(data)
    info = json.loads((split / "index.json").read_text())
    info["shards"][1]["n"] = 39
    (split / "index.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="index.json says 39"):
        load_features(split)


# ------------------------------------------------------------------------ online mode
def test_online_rows_equal_the_cache_to_fp16(tmp_path):
    ctx = fake_context(tmp_path / "w", n_train=40, n_test=24)
    online = dataclasses.replace(ctx, feature_mode="online", _cache={})
    cached, live = ctx.features("test"), online.features("test")
    assert isinstance(live, OnlineFeatures) and len(live) == len(cached)
    assert live.patches.shape == cached.patches.shape
    idx = np.array([5, 0, 23, 5])
    for name in ("global_", "patches"):
        got, want = getattr(live, name)[idx], getattr(cached, name)[torch.as_tensor(idx)]
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)
    batches = list(live.batches([[1, 2, 3], [20, 0]], parts=("patches",)))
    assert [b[0].tolist() for b in batches] == [[1, 2, 3], [20, 0]]
    assert set(batches[0][1]) == {"patches"}


def test_qks_trained_online_matches_cached(tmp_path):
    from pipelines.methods.qks import QKS
    from tests.test_qks import _cfg

    scores = {}
    for mode in ("cached", "online"):
        ctx = fake_context(tmp_path / mode, n_train=40, n_test=24)
        ctx = dataclasses.replace(ctx, feature_mode=mode, _cache={})
        torch.manual_seed(0)
        method = QKS(_cfg(train={"epochs": 2, "batch_size": 16, "lr": 1e-3}))
        summary = method.fit(ctx)
        assert summary["input_mode"] == "features"
        scores[mode] = method.predict(ctx)
        assert isinstance(ctx.features("train"), OnlineFeatures) == (mode == "online")
    np.testing.assert_allclose(scores["online"], scores["cached"], atol=2e-3, rtol=2e-3)
    assert np.abs(scores["cached"]).max() > 1e-2  # not a trivially constant output


def test_rcnn_online_matches_its_dense_cache_and_writes_none(tmp_path):
    from pipelines.methods import rcnn
    from tests.test_rcnn import FAST, _ctx

    cfg = rcnn.Config(**{**FAST, "cnr": False})  # Eq. 5 + MSSA snippets, no training
    cached = rcnn.RCNn(cfg)
    ctx = _ctx(tmp_path / "c")
    assert cached.fit(ctx)["feature_cache"] == {
        "clearclip": "built",
        "clearclip-snippets-g2": "built",
    }
    want = cached.predict(ctx)
    folder = ctx.feature_dir.parent / f"{ctx.feature_dir.name}@clearclip-snippets-g2" / "test"
    dense = cc.load_dense(folder)
    ref = old_load(folder, ("global", "local"))
    assert torch.equal(dense.local[:], ref["local"]) and dense.grids == (2,)

    online_ctx = dataclasses.replace(_ctx(tmp_path / "o"), feature_mode="online", _cache={})
    online = rcnn.RCNn(cfg)
    assert online.fit(online_ctx)["feature_cache"] == {
        "clearclip": "online",
        "clearclip-snippets-g2": "online",
    }
    got = online.predict(online_ctx)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)
    assert not online_ctx.feature_dir.parent.exists()  # no dense cache written


def test_feature_mode_is_declared_per_dataset_and_per_variant():
    from pipelines.config import load_params
    from pipelines.graph import build_graph

    p = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    ds, var = p.cells[0]
    assert p.feature_mode(ds, var) == "cached"
    raw = p.model_dump(exclude={"root", "raw"})
    raw["variants"][var.split("@")[0]]["features"] = "online"
    p2 = type(p).model_validate({**raw, "root": p.root}, context={"check_methods": False})
    assert p2.feature_mode(ds, var) == "online"
    raw["variants"][var.split("@")[0]].pop("features")
    raw["datasets"][ds]["features"] = {"mode": "online", "patches": False}
    p3 = type(p).model_validate({**raw, "root": p.root}, context={"check_methods": False})
    assert p3.feature_mode(ds, var) == "online"
    assert p3.datasets[ds].features.patches is False
    with pytest.raises(ValueError):
        raw["datasets"][ds]["features"] = {"mode": "streamed"}
        type(p).model_validate({**raw, "root": p.root}, context={"check_methods": False})
    # the dataset-level key joins a cell's params only where the file writes it, so a
    # file without it keeps every stage's params (and fingerprint) as before
    assert all("features.mode" not in k for st in build_graph(p).values() for k in st.params)
    raw["datasets"][ds]["features"] = {"mode": "online"}
    written = {
        **p.raw,
        "datasets": {
            **p.raw["datasets"],
            ds: {**p.raw["datasets"][ds], "features": {"mode": "online"}},
        },
    }
    p4 = type(p).model_validate(
        {**raw, "root": p.root, "raw": written}, context={"check_methods": False}
    )
    cell = build_graph(p4)[f"cell@{ds}@{var}"]
    assert f"datasets.{ds}.features.mode" in cell.params


def test_a_bf16_backbone_runs_the_feature_path(tmp_path):
    """``precision: bf16`` builds bf16 weights; the extractor casts the pixels to them
    (a float32 batch into bf16 weights is a dtype error) and stores fp16 values close to
    the fp32 tower's."""
    from pipelines.vlp.backbone import create_backbone
    from pipelines.vlp.features import extract_features
    from tests.test_train import _Images

    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    fp32 = create_backbone("ovml-tiny-vit")
    bf16 = create_backbone("ovml-tiny-vit", precision="bf16")
    bf16.model.load_state_dict(
        {k: v.to(torch.bfloat16) for k, v in fp32.model.state_dict().items()}
    )
    stores = {}
    for name, bb in (("fp32", fp32), ("bf16", bf16)):
        extract_features(bb, _Images(images), tmp_path / name, batch_size=4, progress=False)
        stores[name] = load_features(tmp_path / name)
    g32, g16 = stores["fp32"].global_[:].float(), stores["bf16"].global_[:].float()
    assert (g32 * g16).sum(-1).min() > 0.99  # cosine of the unit-norm embeddings
