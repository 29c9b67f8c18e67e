"""One training loop for every image-trained method.

A method plugs in with a :class:`TrainModule` (an ``nn.Module`` that says which inputs it
needs, computes outputs from a :class:`Batch` and a loss from outputs + targets) and a
:class:`TrainConfig` (a pydantic block every method embeds as ``train:``). The
:class:`Trainer` then provides, for all of them:

- optimiser and schedule from the config (AdamW / Adam / SGD; constant, reduce-on-plateau,
  step milestones, cosine), gradient clipping;
- mixed precision where the device supports it (autocast bf16, or fp16 + GradScaler, on
  CUDA; off on the CPU);
- two input modes: ``features`` (the frozen-backbone cache of pipelines/vlp/features.py,
  so the backbone never runs during training) and ``images`` (uint8 images through the
  backbone every step: needed when an image encoder trains);
- seeding, a progress bar, per-epoch metrics through ``ctx.log_metrics`` (MLflow);
- a checkpoint every epoch in ``ctx.workdir`` (weights as safetensors, optimiser /
  scheduler / scaler / RNG / sampler state as safetensors + JSON, never pickle), written
  atomically, and exact resume after a kill: a rerun continues from the last complete
  checkpoint and ends with bit-identical weights (same device and thread count);
- one process on a CPU or a GPU, or ``torchrun`` with DistributedDataParallel without code
  changes (``WORLD_SIZE > 1`` in the environment; ``batch_size`` is the global batch;
  only rank 0 writes checkpoints and logs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from pipelines.io import world_size
from pipelines.vlp.features import PARTS

if TYPE_CHECKING:
    from pipelines.methods.base import CellContext

InputMode = Literal["features", "images"]
CHECKPOINT_PREFIX = "epoch-"
LATEST = "latest.json"


# ------------------------------------------------------------------------------ config
class TrainConfig(BaseModel):
    """Optimisation settings shared by every trained method (``train:`` in a variant).

    ``batch_size`` is the global batch (split over ranks under torchrun). Milestones of the
    ``step`` schedule are 1-based epochs at whose start the learning rate is multiplied by
    ``gamma`` (Epsilon: ``milestones: [4], gamma: 0.5`` = halved at the 4th epoch).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Annotated[int, Field(ge=0)] = 10
    batch_size: Annotated[int, Field(gt=0)] = 64
    eval_batch_size: Annotated[int, Field(gt=0)] = 256
    lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd only
    schedule: Literal["constant", "plateau", "step", "cosine"] = "constant"
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1  # plateau / step factor
    patience: Annotated[int, Field(ge=0)] = 1  # plateau: epochs without improvement
    milestones: list[Annotated[int, Field(ge=1)]] = []  # step: 1-based epochs
    amp: Literal["auto", "off", "bf16", "fp16"] = (
        "auto"  # auto: bf16 (else fp16) on CUDA, off on CPU
    )
    grad_clip: Annotated[float, Field(gt=0)] | None = None  # max global grad norm
    num_workers: Annotated[int, Field(ge=0)] = 0  # DataLoader workers (images, feature shards)
    threads: Annotated[int, Field(ge=0)] = (
        0  # torch CPU threads while training / predicting; 0 = as set
    )
    input_mode: Literal["auto", "features", "images"] = "auto"  # auto: what the method needs
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = (
        0.0  # held-out train images: seen-label mAP per epoch
    )
    drop_last: bool = False
    resume: bool = True  # continue from the last complete checkpoint in the cell's workdir
    keep_checkpoints: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones (1-based epochs)")
        return self


# ------------------------------------------------------------------------------- batch
@dataclass
class Batch:
    """One batch as a method sees it: cached features *or* pixels, plus row indices.

    ``global_`` (B, D) unit-norm and ``patches`` (B, P, D), float32, in features mode;
    ``pixels`` (B, 3, S, S) normalised, in images mode (the module runs its image tower).
    """

    index: torch.Tensor
    global_: torch.Tensor | None = None
    patches: torch.Tensor | None = None
    pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])


class TrainModule(nn.Module, ABC):
    """What the trainer needs from a method.

    - ``input_mode``: ``"features"`` (cached frozen-backbone outputs) or ``"images"``;
    - ``forward(batch, seen_only=...)``: outputs (a tensor or a dict of tensors); with
      ``seen_only=True`` (training) only the seen labels need scoring, so label
      embeddings that pass through a trainable text tower are computed for those only;
    - ``loss(outputs, targets)``: a scalar, or ``(scalar, {name: scalar})`` for logging;
      ``targets`` is int8 (B, S): +1 positive, -1 negative, 0 unknown (seen labels only);
    - ``scores(outputs)``: (B, C) float scores over every label (seen first) for predict.

    Frozen parts must have ``requires_grad=False``: only trainable parameters (and
    buffers) are optimised and checkpointed.
    """

    input_mode: InputMode = "features"
    # features mode: which cached tensors the batches carry ("global" -> Batch.global_,
    # "patches" -> Batch.patches); a module that needs one only reads one
    feature_parts: tuple[str, ...] = ("global", "patches")

    @abstractmethod
    def forward(self, batch: Batch, *, seen_only: bool = True) -> Any: ...

    @abstractmethod
    def loss(
        self, outputs: Any, targets: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    @abstractmethod
    def scores(self, outputs: Any) -> torch.Tensor: ...

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups; override to give some parameters another lr."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]


class ImageTower(nn.Module):
    """A backbone's image encoder as a (possibly trainable) submodule.

    Returns what the feature cache stores: the unit-norm global embedding and the patch
    tokens in the joint space (pipelines/vlp/backbone.py ``image_tokens``). A frozen
    tower runs without gradients and stays in eval mode.
    """

    def __init__(self, backbone, *, trainable: bool):
        super().__init__()
        import copy

        self.visual = copy.deepcopy(backbone.model.visual)
        self.trainable = trainable
        self.visual.requires_grad_(trainable)
        if not trainable:
            self.visual.eval()

    def train(self, mode: bool = True) -> ImageTower:
        super().train(mode)
        if not self.trainable:
            self.visual.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pipelines.vlp.backbone import Backbone

        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            shim = Backbone("tower", _VisualOnly(self.visual), None, None, pixels.device)
            pooled, tokens = shim.image_tokens(pixels)
        return torch.nn.functional.normalize(pooled, dim=-1), tokens


class _VisualOnly:
    """Just enough of an open_clip model for ``Backbone.image_tokens``."""

    def __init__(self, visual: nn.Module):
        self.visual = visual


def features_or_tower(batch: Batch, tower: ImageTower | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(global (B, D), patches (B, P, D)) from the cache, or from ``tower`` in images mode.
    In features mode a part the module does not list in ``feature_parts`` is None."""
    if batch.pixels is not None:
        if tower is None:
            raise ValueError("images-mode batch but the module has no image tower")
        return tower(batch.pixels)
    if batch.global_ is None and batch.patches is None:
        raise ValueError("features-mode batch without features")
    return batch.global_, batch.patches


# ---------------------------------------------------------------------- safe state I/O
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able tree with tensors / arrays moved to ``tensors`` (no pickle anywhere)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, Counter):  # MultiStepLR milestones
        return {"__counter__": [[_encode(k, tensors), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__dict__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__counter__" in obj:
            return Counter({_decode(k, tensors): v for k, v in obj["__counter__"]})
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


def save_state(path: Path, obj: Any) -> None:
    """Write a nested state (optimiser, scheduler, RNG ...) as ``path.json`` + ``path.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors)
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(tree))


def load_state(path: Path) -> Any:
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return _decode(json.loads(path.with_suffix(".json").read_text()), tensors)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters + persistent buffers: what changes during training."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    full = module.state_dict()
    buffers = {n for n, _ in module.named_buffers() if n in full}
    return {k: v.detach().cpu().contiguous() for k, v in full.items() if k in names or k in buffers}


# ------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Initialise the process group from torchrun's environment when WORLD_SIZE > 1."""
    world = world_size()
    if world <= 1:
        return DistInfo(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local), device


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------- data
class _ImageBatches(Dataset):
    """Whole batches of uint8 images (one ``ImageSource.get`` call per batch)."""

    def __init__(self, source, size: int):
        self.source, self.size = source, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = self.source.get(np.asarray(indices), self.size)
        return torch.as_tensor(np.asarray(indices)), torch.from_numpy(np.ascontiguousarray(imgs))


def _chunks(order: list[int], size: int, drop_last: bool) -> list[list[int]]:
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if drop_last and out and len(out[-1]) < size:
        out.pop()
    return out


@dataclass
class _Source:
    """Rows of one split in one input mode; yields device :class:`Batch` es."""

    mode: InputMode
    device: torch.device
    features: Any = None  # a pipelines.vlp.features RowReader (cached store, online, memory)
    images: Any = None  # ImageSource
    backbone: Any = None  # Backbone (pixel preprocessing)
    num_workers: int = 0
    parts: tuple[str, ...] = ("global", "patches")  # what the module reads (features mode)

    def batches(
        self, batch_indices: list[list[int]], *, progress: bool = False, desc: str = ""
    ) -> Iterator[Batch]:
        bar = tqdm(
            total=len(batch_indices), desc=desc, disable=not progress, leave=False, unit="batch"
        )
        try:
            if self.mode == "features":  # streamed from the shards by a DataLoader
                for index, rows in self.features.batches(
                    batch_indices,
                    parts=self.parts,
                    num_workers=self.num_workers,
                    pin_memory=self.device.type == "cuda",
                ):
                    yield Batch(
                        index=index,
                        **{
                            ("global_" if part == "global" else part): t.to(
                                self.device, torch.float32, non_blocking=True
                            )
                            for part, t in rows.items()
                        },
                    )
                    bar.update(1)
                return
            loader = DataLoader(
                _ImageBatches(self.images, self.backbone.image_size),
                sampler=batch_indices,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
            )
            for index, imgs in loader:
                pixels = self.backbone.uint8_to_tensor(imgs.numpy()).to(self.device)
                yield Batch(index=index, pixels=pixels)
                bar.update(1)
        finally:
            bar.close()


# ------------------------------------------------------------------------ checkpoints
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(workdir: Path) -> Path | None:
    """The last complete checkpoint folder (``latest.json`` is written after it)."""
    marker = workdir / LATEST
    if not marker.exists():
        return None
    try:
        name = json.loads(marker.read_text())["checkpoint"]
    except (ValueError, KeyError):
        return None
    path = workdir / name
    return path if (path / "meta.json").exists() else None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def file_digest(*paths: str | Path) -> str:
    """Content hash of source files (part of a checkpoint's fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ trainer
@dataclass
class FitResult:
    epochs_run: int
    resumed_from: int
    history: list[dict[str, float]]
    seconds: float
    input_mode: InputMode
    n_params_trainable: int
    amp: str
    world_size: int = 1

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "epochs": len(self.history),
            "epochs_run_now": self.epochs_run,
            "resumed_from_epoch": self.resumed_from,
            "final_train_loss": last.get("train_loss"),
            "train_seconds": round(self.seconds, 2),
            "input_mode": self.input_mode,
            "trainable_params": self.n_params_trainable,
            "amp": self.amp,
            "world_size": self.world_size,
            "history": self.history,
        }


EpochCallback = Callable[[int, dict[str, float]], None]
StepCallback = Callable[[int, int], None]


class Trainer:
    """Fits a :class:`TrainModule` on a cell's train split and predicts any split.

    ``on_epoch_end(epoch, metrics)`` runs after each epoch's checkpoint is complete and
    ``on_step(epoch, step)`` after each optimiser step (hooks for tests and tools).
    """

    def __init__(
        self,
        config: TrainConfig,
        ctx: CellContext,
        *,
        fingerprint: dict[str, Any] | None = None,
        on_epoch_end: EpochCallback | None = None,
        on_step: StepCallback | None = None,
    ):
        self.cfg = config
        self.ctx = ctx
        self.dist, self.device = setup_distributed(torch.device(ctx.device))
        self.fingerprint = {
            "train": config.model_dump(mode="json"),
            "seed": ctx.seed,
            "n_train": int(len(ctx.train_labels)),
            "n_seen": ctx.n_seen,
            "world": self.dist.world,
            **(fingerprint or {}),
        }
        self.on_epoch_end = on_epoch_end
        self.on_step = on_step

    # ----------------------------------------------------------------- pieces
    def input_mode(self, module: TrainModule) -> InputMode:
        if self.cfg.input_mode == "auto":
            return module.input_mode
        if self.cfg.input_mode == "features" and module.input_mode == "images":
            raise ValueError(
                "this method trains an image encoder: it needs input_mode 'images' (or 'auto')"
            )
        return self.cfg.input_mode

    def amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.cfg.amp == "off":
            return None
        if self.cfg.amp == "fp16":
            return torch.float16
        if self.cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def source(self, split: str, mode: InputMode, parts: tuple[str, ...] = PARTS) -> _Source:
        if mode == "features":
            return _Source(
                "features",
                self.device,
                features=self.ctx.features(split),
                num_workers=self.cfg.num_workers,
                parts=parts,
            )
        return _Source(
            "images",
            self.device,
            images=self.ctx.open_images(split),
            backbone=self.ctx.backbone,
            num_workers=self.cfg.num_workers,
        )

    def make_optimizer(self, module: TrainModule) -> torch.optim.Optimizer:
        groups = [g for g in module.param_groups(self.cfg.lr) if g["params"]]
        if not groups:
            raise ValueError(f"{type(module).__name__} has no trainable parameters")
        c = self.cfg
        if c.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def make_scheduler(self, opt: torch.optim.Optimizer):
        """Stepped once per epoch (plateau: on the epoch's mean train loss)."""
        c = self.cfg
        if c.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=c.gamma, patience=c.patience, threshold=1e-3
            )
        if c.schedule == "step":  # milestone m (1-based epoch) = after m-1 scheduler steps
            return torch.optim.lr_scheduler.MultiStepLR(
                opt, [m - 1 for m in c.milestones], gamma=c.gamma
            )
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, c.epochs))
        return None

    def split_train_val(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ctx.train_labels)
        if self.cfg.val_fraction <= 0:
            return np.arange(n), np.arange(0)
        perm = np.random.default_rng(self.ctx.seed + 7919).permutation(n)
        n_val = max(1, int(round(n * self.cfg.val_fraction)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Tiny models on a busy CPU run far faster on one thread than oversubscribed."""
        before = torch.get_num_threads()
        if self.cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # ------------------------------------------------------------------- fit
    def fit(self, module: TrainModule) -> FitResult:
        with self._threads(), self._workdir_lock():
            return self._fit(module)

    @contextlib.contextmanager
    def _workdir_lock(self) -> Iterator[None]:
        """One writer per cell workdir: a second run of the same cell (another process)
        waits, then resumes from the first one's checkpoints instead of clobbering them."""
        if not self.dist.main:
            yield
            return
        import fcntl

        work = Path(self.ctx.workdir)
        work.mkdir(parents=True, exist_ok=True)
        with open(work / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _fit(self, module: TrainModule) -> FitResult:
        t0 = time.time()
        cfg, ctx, info = self.cfg, self.ctx, self.dist
        torch.manual_seed(ctx.seed + info.rank)
        np.random.seed(ctx.seed + info.rank)
        random.seed(ctx.seed + info.rank)
        mode = self.input_mode(module)
        module.to(self.device)
        train_idx, val_idx = self.split_train_val()
        targets = ctx.train_labels  # dense (N, C) or SparseLabels; made dense per batch
        source = self.source("train", mode, module.feature_parts)
        opt = self.make_optimizer(module)
        sched = self.make_scheduler(opt)
        amp = self.amp_dtype()
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        model: nn.Module = module
        if info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        sampler = DistributedSampler(
            train_idx.tolist(),
            num_replicas=info.world,
            rank=info.rank,
            shuffle=True,
            seed=ctx.seed,
            drop_last=cfg.drop_last,
        )
        per_rank = max(1, cfg.batch_size // info.world)

        self.fingerprint["data"] = self._data_digest(mode, module.feature_parts)
        start, history = self._resume(module, opt, sched, scaler)
        for past in history:  # the new run (e.g. a new MLflow run) gets the whole curve
            if info.main:
                ctx.log_metrics(past, int(past["epoch"]))
        epochs_run = 0
        for epoch in range(start + 1, cfg.epochs + 1):
            te = time.time()
            sampler.set_epoch(epoch)
            order = [int(train_idx[i]) for i in sampler]
            batches = _chunks(order, per_rank, cfg.drop_last)
            module.train()
            sums: dict[str, float] = {}
            n_seen_rows = 0
            desc = f"{ctx.variant} epoch {epoch}/{cfg.epochs}"
            for step, batch in enumerate(
                source.batches(batches, progress=ctx.progress and info.main, desc=desc)
            ):
                loss, parts = self._step(model, module, batch, targets, opt, scaler, amp)
                n = len(batch)
                n_seen_rows += n
                for k, v in {"train_loss": loss, **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                if self.on_step is not None:
                    self.on_step(epoch, step)
            metrics = self._reduce({k: v / max(1, n_seen_rows) for k, v in sums.items()})
            metrics["lr"] = float(opt.param_groups[0]["lr"])
            if sched is not None:
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(metrics["train_loss"])
                else:
                    sched.step()
            if len(val_idx):
                metrics.update(self._validate(module, mode, val_idx))
            metrics["epoch"] = float(epoch)
            metrics["epoch_seconds"] = round(time.time() - te, 3)
            history.append(metrics)
            self._save(module, opt, sched, scaler, epoch, history)
            epochs_run += 1
            if info.main:
                ctx.log_metrics(metrics, epoch)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, metrics)
        module.eval()
        n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return FitResult(
            epochs_run,
            start,
            history,
            time.time() - t0,
            mode,
            n_params,
            str(amp).removeprefix("torch.") if amp else "off",
            info.world,
        )

    def _data_digest(self, mode: InputMode, parts: tuple[str, ...] = PARTS) -> str:
        """Labels, label names and every frozen input (the cached features the module
        reads, streamed shard by shard, and the whole backbone's weights, image and text
        towers both): a checkpoint trained on another backbone, weights file or dataset
        is never resumed."""
        h = hashlib.sha256()
        labels = self.ctx.train_labels
        if isinstance(labels, np.ndarray):
            h.update(np.ascontiguousarray(labels).tobytes())
        else:  # SparseLabels
            labels.digest_update(h)
        h.update("\n".join(self.ctx.label_space.names()).encode())
        if mode == "features":
            self.ctx.features("train").digest_update(h, parts)
        for name, t in sorted(self.ctx.backbone.model.state_dict().items()):
            h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _step(
        self, model, module, batch, targets, opt, scaler, amp
    ) -> tuple[float, dict[str, float]]:
        rows = batch.index.numpy()
        tgt = torch.from_numpy(np.ascontiguousarray(targets[rows, : self.ctx.n_seen]))
        tgt = tgt.to(self.device)
        opt.zero_grad(set_to_none=True)
        ctx_amp = torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx_amp:
            out = model(batch, seen_only=True)
            res = module.loss(out, tgt)
        loss, parts = res if isinstance(res, tuple) else (res, {})
        scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(
                [p for g in opt.param_groups for p in g["params"]], self.cfg.grad_clip
            )
        scaler.step(opt)
        scaler.update()
        return float(loss.detach()), {k: float(v.detach()) for k, v in parts.items()}

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.dist.world <= 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.dist.world for k, v in zip(keys, t.tolist(), strict=True)}

    def _validate(
        self, module: TrainModule, mode: InputMode, val_idx: np.ndarray
    ) -> dict[str, float]:
        from pipelines.metrics import evaluate_block

        scores = self.predict(module, "train", indices=val_idx, mode=mode)[:, : self.ctx.n_seen]
        labels = self.ctx.train_labels[val_idx, : self.ctx.n_seen]
        res = evaluate_block(scores, labels, [3], zero_positive="zero", keep_images="all")
        return {"val_seen_mAP": float(res["mAP"]), "val_seen_F1_at_3": float(res["F1@3"])}

    # -------------------------------------------------------------- predict
    def predict(
        self,
        module: TrainModule,
        split: str = "test",
        *,
        indices: np.ndarray | None = None,
        mode: InputMode | None = None,
    ) -> np.ndarray:
        """(N, C) float32 scores over every label, in the split's row order."""
        with self._threads():
            return self._predict(module, split, indices, mode)

    @torch.no_grad()
    def _predict(
        self, module: TrainModule, split: str, indices: np.ndarray | None, mode: InputMode | None
    ) -> np.ndarray:
        mode = mode or self.input_mode(module)
        was_training = module.training
        module.to(self.device).eval()
        source = self.source(split, mode, module.feature_parts)
        n = (
            len(self.ctx.test_labels if split == "test" else self.ctx.train_labels)
            if indices is None
            else len(indices)
        )
        rows = list(range(n)) if indices is None else [int(i) for i in indices]
        out = []
        # Prediction runs in float32 even when training used autocast: bf16 scores keep about
        # three significant digits, and over 100k test images the ties change mAP and top-K.
        for batch in source.batches(_chunks(rows, self.cfg.eval_batch_size, False)):
            s = module.scores(module(batch, seen_only=False))
            out.append(s.float().cpu())
        module.train(was_training)
        return (
            torch.cat(out).numpy().astype(np.float32)
            if out
            else np.zeros((0, self.ctx.n_labels), np.float32)
        )

    # ---------------------------------------------------------- checkpoints
    def _fingerprint_hash(self) -> str:
        return hashlib.sha256(
            json.dumps(self.fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    def _save(
        self, module, opt, sched, scaler, epoch: int, history: list[dict[str, float]]
    ) -> None:
        """Atomic: write into a temp folder, rename it, then point ``latest.json`` at it."""
        info, work = self.dist, Path(self.ctx.workdir)
        name = f"{CHECKPOINT_PREFIX}{epoch:04d}"
        tmp = work / f".{name}.tmp"
        if info.main:
            work.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier(info)
        save_state(tmp / f"rng-{info.rank}", _rng_state())  # each rank's own generators
        _barrier(info)
        if info.main:
            save_file(trainable_state(module), str(tmp / "model.safetensors"))
            save_state(tmp / "optimizer", opt.state_dict())
            save_state(
                tmp / "trainer",
                {
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "scaler": scaler.state_dict(),
                    "history": history,
                },
            )
            (tmp / "meta.json").write_text(
                json.dumps(
                    {
                        "epoch": epoch,
                        "fingerprint": self._fingerprint_hash(),
                        "world": info.world,
                        "fingerprint_data": self.fingerprint,
                    },
                    indent=1,
                    default=str,
                )
            )
            final = work / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_json_atomic(work / LATEST, {"checkpoint": name, "epoch": epoch})
            self._prune(work, keep=self.cfg.keep_checkpoints)
        _barrier(info)

    @staticmethod
    def _prune(work: Path, keep: int) -> None:
        ckpts = sorted(p for p in work.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
        for p in ckpts[:-keep]:
            shutil.rmtree(p, ignore_errors=True)

    def _resume(self, module, opt, sched, scaler) -> tuple[int, list[dict[str, float]]]:
        if not self.cfg.resume:
            return 0, []
        ckpt = latest_checkpoint(Path(self.ctx.workdir))
        if ckpt is None:
            return 0, []
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta.get("fingerprint") != self._fingerprint_hash():
            if self.dist.main:
                print(
                    f"[train] {ckpt} was written for another config or code; starting from scratch",
                    file=sys.stderr,
                )
            return 0, []
        weights = load_file(str(ckpt / "model.safetensors"))
        missing, unexpected = module.load_state_dict(weights, strict=False)
        expected = set(trainable_state(module))
        if unexpected or expected & set(missing):
            raise RuntimeError(
                f"{ckpt}: checkpoint does not match the module ({unexpected=}, {missing=})"
            )
        module.to(self.device)
        opt.load_state_dict(load_state(ckpt / "optimizer"))  # casts states to the params' device
        state = load_state(ckpt / "trainer")
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rng_file = ckpt / f"rng-{self.dist.rank}"
        _set_rng_state(
            load_state(rng_file if rng_file.with_suffix(".json").exists() else ckpt / "rng-0")
        )
        return int(meta["epoch"]), list(state["history"])


# --------------------------------------------------------------------- method helpers
def compact_annotated(
    scores: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, only the annotated columns (targets +1 / -1), left-packed and padded with
    target 0: pairwise (positive x negative) losses then cost O(B K^2) with K the largest
    number of annotated labels of an image, not O(B C^2) (Open Images: K << C)."""
    known = targets != 0
    k = int(known.sum(dim=1).max()) if targets.numel() else 0
    if k * 2 >= targets.shape[1]:
        return scores, targets
    order = torch.argsort(known.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), targets.gather(1, order)


def method_fingerprint(module: nn.Module, config: BaseModel) -> dict[str, Any]:
    """What makes a checkpoint reusable: the method config and the code of method + trainer."""
    mod = sys.modules[type(module).__module__]
    files = [f for f in (getattr(mod, "__file__", None), __file__) if f]
    return {
        "method": type(module).__module__,
        "config": config.model_dump(mode="json"),
        "code": file_digest(*files),
    }
