"""The shared trainer: safe checkpoints, exact resume after SIGKILL, schedules, input modes.

Everything runs on a tiny synthetic CellContext (random-init ``ovml-tiny-vit`` backbone,
random images, features computed from them) built by :func:`fake_context`, which the
QKS / Epsilon tests reuse.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipelines.data.prepared import Label, LabelSpace
from pipelines.methods.base import CellContext
from pipelines.train import (
    Batch,
    TrainConfig,
    Trainer,
    TrainModule,
    compact_annotated,
    features_or_tower,
    latest_checkpoint,
    load_state,
    save_state,
    trainable_state,
)
from pipelines.vlp.features import Features

REPO = Path(__file__).resolve().parent.parent
SEEN = ("red", "blue", "circle", "square", "fish", "tree", "sky", "grass")
UNSEEN = ("green", "star", "bird", "water")


@functools.lru_cache(maxsize=1)
def _backbone():
    from pipelines.vlp.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone("ovml-tiny-vit")


@functools.lru_cache(maxsize=4)
def _data(n_train: int, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    bb = _backbone()
    images = {
        s: rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        for s, n in (("train", n_train), ("test", n_test))
    }
    feats = {}
    for split, imgs in images.items():
        g, p = bb.encode_images(bb.uint8_to_tensor(imgs))
        feats[split] = Features(
            g.half(), p.half(), np.array([f"{split}_{i}" for i in range(len(imgs))])
        )
    s, u = len(SEEN), len(UNSEEN)
    train = np.where(rng.random((n_train, s + u)) < 0.3, 1, -1).astype(np.int8)
    train[:, s:] = 0
    train[rng.random((n_train, s + u)) < 0.1] = 0  # a few unknowns among the seen labels too
    test = np.where(rng.random((n_test, s + u)) < 0.3, 1, -1).astype(np.int8)
    return images, feats, train, test


class _Images:
    def __init__(self, array: np.ndarray):
        self.array, self.image_ids = array, np.arange(len(array)).astype(str)

    def __len__(self) -> int:
        return len(self.array)

    def get(self, indices, size: int) -> np.ndarray:
        return self.array[np.asarray(indices)]


def fake_context(
    workdir: Path, *, n_train: int = 40, n_test: int = 24, seed: int = 0, log=None
) -> CellContext:
    """A CellContext over random images whose cached features come from the same backbone."""
    images, feats, train, test = _data(n_train, n_test, seed)
    space = LabelSpace([Label(n, n) for n in SEEN], [Label(n, n) for n in UNSEEN])
    return CellContext(
        dataset="fake",
        variant="test",
        label_space=space,
        train_labels=train,
        test_labels=test,
        backbone_name="ovml-tiny-vit",
        device=torch.device("cpu"),
        seed=seed,
        workdir=Path(workdir),
        load_backbone=_backbone,
        load_features=lambda split: feats[split],
        open_images=lambda split: _Images(images[split]),
        log_metrics=log or (lambda m, s: None),
        progress=False,
    )


class TinyModule(TrainModule):
    """Linear scores from the mean patch token: the smallest real TrainModule."""

    def __init__(
        self,
        d: int = 128,
        n_labels: int = len(SEEN) + len(UNSEEN),
        n_seen: int = len(SEEN),
        dropout: float = 0.2,
        tower=None,
    ):
        super().__init__()
        self.head = nn.Linear(d, n_labels)
        self.drop = nn.Dropout(dropout)
        self.n_seen = n_seen
        self.tower = tower
        if tower is not None:
            self.input_mode = "images"

    def forward(self, batch: Batch, *, seen_only: bool = True):
        _, p = features_or_tower(batch, self.tower)
        s = self.head(self.drop(p.float().mean(dim=1)))
        return s[:, : self.n_seen] if seen_only else s

    def loss(self, outputs, targets):
        known = (targets != 0).float()
        bce = nn.functional.binary_cross_entropy_with_logits(
            outputs, (targets > 0).float(), reduction="none"
        )
        return (bce * known).sum(1).mean(), {"known": known.sum(1).mean()}

    def scores(self, outputs):
        return outputs


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 8, "lr": 1e-2, "eval_batch_size": 16}
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- state I/O
def test_safe_state_roundtrip_without_pickle(tmp_path):
    opt = torch.optim.AdamW(nn.Linear(3, 2).parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4], gamma=0.5)
    obj = {
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "np": np.random.get_state(),
        "inf": float("inf"),
        "tuple": (1, 2.5, None),
        3: "int key",
        "c": Counter({2: 1}),
    }
    save_state(tmp_path / "s", obj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]
    back = load_state(tmp_path / "s")
    assert back[3] == "int key" and back["tuple"] == (1, 2.5, None) and back["inf"] == float("inf")
    assert isinstance(back["sched"]["milestones"], Counter) and back["sched"]["milestones"][3] == 0
    assert back["np"][0] == "MT19937" and np.array_equal(back["np"][1], obj["np"][1])
    assert back["opt"]["param_groups"][0]["betas"] == obj["opt"]["param_groups"][0]["betas"]


def test_compact_annotated_keeps_only_known_columns():
    scores = torch.arange(12.0).view(2, 6)
    targets = torch.tensor([[0, 1, 0, 0, -1, 0], [0, 0, 0, -1, 0, 0]], dtype=torch.int8)
    s, t = compact_annotated(scores, targets)
    assert s.tolist() == [[1.0, 4.0], [9.0, 6.0]] or s[0].tolist() == [1.0, 4.0]
    assert t.tolist()[0] == [1, -1] and t.tolist()[1][0] == -1 and t.tolist()[1][1] == 0


# ------------------------------------------------------------------------------ fitting
def test_fit_learns_logs_and_checkpoints(tmp_path):
    logged = []
    ctx = fake_context(tmp_path / "w", log=lambda m, s: logged.append((s, m)))
    torch.manual_seed(0)
    module = TinyModule(dropout=0.0)
    res = Trainer(_cfg(epochs=6, lr=3e-2), ctx).fit(module)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (
        [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
        and "lr" in logged[0][1]
        and "known" in logged[0][1]
    )
    ckpt = latest_checkpoint(tmp_path / "w")
    assert ckpt is not None and ckpt.name == "epoch-0006"
    files = {p.suffix for p in ckpt.iterdir()}
    assert files <= {".json", ".safetensors"}, (
        "checkpoints are safetensors + JSON only, never pickle"
    )
    assert (
        len([p for p in (tmp_path / "w").iterdir() if p.name.startswith("epoch-")]) == 1
    )  # pruned
    scores = Trainer(_cfg(), ctx).predict(module, "test")
    assert scores.shape == (24, len(SEEN) + len(UNSEEN)) and scores.dtype == np.float32


def test_step_schedule_halves_at_the_given_epoch(tmp_path):
    ctx = fake_context(tmp_path)
    res = Trainer(
        _cfg(
            epochs=5,
            lr=1e-2,
            optimizer="adam",
            weight_decay=4e-3,
            schedule="step",
            milestones=[4],
            gamma=0.5,
        ),
        ctx,
    ).fit(TinyModule())
    assert [h["lr"] for h in res.history] == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3, 5e-3])


def test_plateau_schedule_divides_by_ten(tmp_path):
    ctx = fake_context(tmp_path)
    # a negligible lr keeps the loss flat, so every epoch is a plateau (patience 0)
    res = Trainer(_cfg(epochs=4, lr=1e-5, schedule="plateau", patience=0), ctx).fit(
        TinyModule(dropout=0.0)
    )
    assert [h["lr"] for h in res.history] == pytest.approx(
        [1e-5, 1e-5, 1e-6, 1e-7]
    )  # epoch 1 sets the best


def test_validation_split_reports_seen_map(tmp_path):
    ctx = fake_context(tmp_path)
    res = Trainer(_cfg(epochs=1, val_fraction=0.25), ctx).fit(TinyModule())
    assert 0 <= res.history[0]["val_seen_mAP"] <= 100


def test_images_mode_matches_features_mode_with_a_frozen_tower(tmp_path):
    """End to end through a frozen tower = the cached features (up to their fp16 rounding)."""
    from pipelines.train import ImageTower

    ctx = fake_context(tmp_path)
    tower = ImageTower(ctx.backbone, trainable=False)
    torch.manual_seed(0)
    a = TinyModule(dropout=0.0)
    b = TinyModule(dropout=0.0, tower=tower)
    b.head.load_state_dict(a.head.state_dict())
    sa = Trainer(_cfg(), ctx).predict(a, "test")
    sb = Trainer(_cfg(), ctx).predict(b, "test")
    assert np.allclose(sa, sb, atol=2e-2)
    assert not any(n.startswith("tower") for n in trainable_state(b)), (
        "a frozen tower is not checkpointed"
    )
    with pytest.raises(ValueError, match="input_mode"):
        Trainer(_cfg(input_mode="features"), ctx).input_mode(b)


def test_changed_config_does_not_resume_a_stale_checkpoint(tmp_path, capsys):
    ctx = fake_context(tmp_path)
    Trainer(_cfg(epochs=2), ctx).fit(TinyModule())
    res = Trainer(_cfg(epochs=2, lr=5e-3), ctx).fit(TinyModule())
    assert res.resumed_from == 0 and res.epochs_run == 2
    assert "another config" in capsys.readouterr().err


def test_finished_run_resumes_to_the_end_without_training(tmp_path):
    ctx = fake_context(tmp_path)
    torch.manual_seed(0)
    m1 = TinyModule()
    Trainer(_cfg(), ctx).fit(m1)
    torch.manual_seed(123)  # another init: the checkpoint must overwrite it
    m2 = TinyModule()
    res = Trainer(_cfg(), ctx).fit(m2)
    assert res.epochs_run == 0 and res.resumed_from == 3 and len(res.history) == 3
    assert torch.equal(m1.head.weight, m2.head.weight)


def test_half_written_checkpoint_is_ignored(tmp_path):
    ctx = fake_context(tmp_path)
    Trainer(_cfg(epochs=1), ctx).fit(TinyModule())
    (tmp_path / ".epoch-0002.tmp").mkdir()  # a kill while writing epoch 2
    (tmp_path / ".epoch-0002.tmp" / "model.safetensors").write_bytes(b"partial")
    res = Trainer(_cfg(epochs=2), ctx).fit(TinyModule())
    assert (
        res.resumed_from == 0
    )  # another config (epochs changed) -> fresh, and the tmp is replaced
    assert latest_checkpoint(tmp_path).name == "epoch-0002"
    (tmp_path / "latest.json").write_text("{not json")
    assert latest_checkpoint(tmp_path) is None


# ------------------------------------------------------------------ kill and resume
def _child(work: str, kill_epoch: str, kill_step: str, out: str) -> None:
    """A training run in a forked process (no re-import); SIGKILLs itself at (epoch, step)."""
    torch.set_num_threads(1)
    kill_at = (int(kill_epoch), int(kill_step))

    def on_step(epoch: int, step: int) -> None:
        if (epoch, step) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ctx = fake_context(Path(work))
    torch.manual_seed(0)
    module = TinyModule(dropout=0.3)
    cfg = _cfg(epochs=4, schedule="plateau", patience=0)
    res = Trainer(cfg, ctx, on_step=on_step).fit(module)
    from safetensors.torch import save_file

    save_file(trainable_state(module), out + ".safetensors")
    Path(out + ".json").write_text(
        json.dumps({"resumed_from": res.resumed_from, "history": res.history})
    )


def _run(*args) -> int:
    import multiprocessing as mp

    proc = mp.get_context("fork").Process(target=_child, args=tuple(map(str, args)))
    proc.start()
    proc.join(timeout=300)
    return proc.exitcode


def test_sigkill_then_rerun_gives_bit_identical_weights(tmp_path):
    """Killed (SIGKILL) in the middle of epoch 3, after epoch 2's checkpoint; the rerun resumes
    from epoch 2 and ends with exactly the weights and losses of an uninterrupted run."""
    fake_context(tmp_path)  # build the shared fixtures before forking
    assert _run(tmp_path / "ref", -1, -1, tmp_path / "ref") == 0
    assert _run(tmp_path / "run", 3, 2, tmp_path / "killed") == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0002"
    assert not (tmp_path / "killed.json").exists()
    assert _run(tmp_path / "run", -1, -1, tmp_path / "resumed") == 0
    r_ref = json.loads((tmp_path / "ref.json").read_text())
    r_res = json.loads((tmp_path / "resumed.json").read_text())
    assert r_res["resumed_from"] == 2 and len(r_res["history"]) == 4
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]  # noqa: E731
    assert strip(r_res["history"]) == strip(r_ref["history"])
    a, b = (
        load_file(str(tmp_path / "ref.safetensors")),
        load_file(str(tmp_path / "resumed.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- torchrun / DDP
def _ddp_child(rank: int, world: int, port: int, work: str, out: str) -> None:
    """One rank of a 2-process gloo group, set up the way torchrun sets the environment."""
    torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    ctx = fake_context(Path(work))
    torch.manual_seed(0)
    module = TinyModule(dropout=0.0)
    Trainer(_cfg(epochs=2, batch_size=8), ctx).fit(module)
    from safetensors.torch import save_file

    save_file(trainable_state(module), f"{out}-{rank}.safetensors")
    torch.distributed.destroy_process_group()


def test_torchrun_ddp_matches_one_process(tmp_path):
    """WORLD_SIZE=2 (gloo, CPU): ranks stay in sync, only rank 0 writes the checkpoint (with
    each rank's RNG state), and the result equals one process with the same global batch."""
    import multiprocessing as mp
    import socket

    fake_context(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fork = mp.get_context("fork")
    procs = [
        fork.Process(
            target=_ddp_child, args=(r, 2, port, str(tmp_path / "ddp"), str(tmp_path / "w"))
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    w0, w1 = (
        load_file(str(tmp_path / "w-0.safetensors")),
        load_file(str(tmp_path / "w-1.safetensors")),
    )
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    ckpt = latest_checkpoint(tmp_path / "ddp")
    assert ckpt.name == "epoch-0002" and (ckpt / "rng-1.json").exists()
    assert json.loads((ckpt / "meta.json").read_text())["world"] == 2
    ctx = fake_context(tmp_path / "single")
    torch.manual_seed(0)
    single = TinyModule(dropout=0.0)
    Trainer(_cfg(epochs=2, batch_size=8), ctx).fit(single)
    assert all(torch.allclose(w0[k], v, atol=1e-5) for k, v in trainable_state(single).items())


def test_checkpoint_of_other_features_is_not_resumed(tmp_path, capsys):
    """Same config, but the backbone (hence the cached features) changed: start afresh."""
    import dataclasses

    ctx = fake_context(tmp_path)
    Trainer(_cfg(epochs=1), ctx).fit(TinyModule())
    feats = ctx.features("train")
    other = dataclasses.replace(feats, global_=feats.global_.flip(0))
    ctx2 = dataclasses.replace(ctx, load_features=lambda split: other, _cache={})
    res = Trainer(_cfg(epochs=1), ctx2).fit(TinyModule())
    assert res.resumed_from == 0 and res.epochs_run == 1


def test_sparse_train_labels_train_exactly_as_dense(tmp_path):
    """Open Images train labels stay sparse (9M x 7,586 would be 64 GB dense): the trainer
    makes each batch's rows dense, and the result equals training on the dense matrix."""
    from dataclasses import replace

    from pipelines.data.prepared import Split
    from pipelines.data.sparse_labels import SparseLabels

    dense_ctx = fake_context(tmp_path / "dense")
    ids = np.asarray([f"i{k}" for k in range(len(dense_ctx.train_labels))])
    sparse = SparseLabels.from_dense(Split(ids, dense_ctx.train_labels))
    sparse_ctx = replace(dense_ctx, train_labels=sparse, workdir=tmp_path / "sparse", _cache={})
    runs = []
    for ctx in (dense_ctx, sparse_ctx):
        torch.manual_seed(0)
        module = TinyModule(dropout=0.0)
        res = Trainer(_cfg(epochs=2, lr=3e-2, val_fraction=0.25), ctx).fit(module)
        runs.append((res.history, module.head.weight.detach().clone()))
    (h_dense, w_dense), (h_sparse, w_sparse) = runs
    assert torch.equal(w_dense, w_sparse)
    assert [h["train_loss"] for h in h_dense] == [h["train_loss"] for h in h_sparse]
    assert h_dense[-1]["val_seen_mAP"] == h_sparse[-1]["val_seen_mAP"]


def test_predict_runs_in_float32_even_when_training_uses_autocast(tmp_path, monkeypatch):
    """Training may use bf16 autocast; prediction must not (scores keep full precision)."""
    import pipelines.train as train_mod

    ctx = fake_context(tmp_path / "w")
    trainer = Trainer(_cfg(), ctx)
    monkeypatch.setattr(Trainer, "amp_dtype", lambda self: torch.bfloat16)
    entered = []
    real = torch.autocast

    def spy(*a, **kw):
        entered.append((a, kw))
        return real(*a, **kw)

    monkeypatch.setattr(train_mod.torch, "autocast", spy)
    module = TinyModule(dropout=0.0)
    scores = trainer.predict(module, "test")
    assert entered == [] and scores.dtype == np.float32
