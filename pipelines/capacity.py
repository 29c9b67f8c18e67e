"""The capacity plan: for each stage of a params file, the bytes it writes, its peak host and
GPU memory and its GPU-hours, and whether it fits a declared node (``cluster.node``).

Torch-free: every figure is an **estimate** from the stage's sizes (images, labels, tokens,
width) and per-image costs counted once in ``bench/bench_flops.py`` (shapes only, on
PyTorch's meta device; nothing timed):

=====================  =======  ========  ===========  ===========
tower                  GFLOP    params M  max out MB   sum out MB
=====================  =======  ========  ===========  ===========
ViT-B-16 image         35.13    86.2      9.44         1001.1
ViT-B-32 image          8.82    87.8      9.44          486.4
RN50 image             12.22    38.3      16.78         245.2
RN101 image            19.54    56.3      16.78         316.1
torchvision:vgg19      39.02    20.0      12.85         136.9
CLIP text (prompt)      5.96    63.4      4.19          307.6
=====================  =======  ========  ===========  ===========

(GFLOP = 2 x multiply-accumulates, as ``torch.utils.flop_counter`` counts; "max out" is the
largest single op output of one image, "sum out" all op outputs of one image: the upper
bound of what a backward pass keeps.) No GPU was timed for these figures: GPU-hours are
FLOPs divided by an assumed sustained throughput, :data:`GPU_TFLOPS` (H100 SXM peak: 67
TFLOPS fp32 without tensor cores, 989 fp16/bf16 dense) times :data:`UTILISATION` (0.4).

How each stage is modelled (:func:`estimate`):

- ``dataset``: labels and ids (bytes ~ images x (labels / 8 + 64)); holds a dense label
  matrix (1 byte per entry) once: an upper bound where the reader keeps labels sparse.
- ``images``: JPEGs at the download's short side of 256, :data:`JPEG_BYTES` each (an
  assumption, not measured: Flickr-like photos at quality ~90); a few MB per worker.
- ``features``: fp16 global + patch tokens, (1 + P) x D x 2 bytes per image
  (pipelines/vlp/features.py); host memory is one shard of
  ``features.SHARD_SIZE`` images buffered and concatenated (x2) plus the model; GPU memory
  the weights plus a batch of 4 x "max out" per image; GPU time one forward per image.
- ``cell``: memory is modelled as what the **streaming** feature reader holds (branch
  s4/c-stream, issue 20 item 3): two shard-sized buffers of the features it reads, plus
  the test scores (n_test x labels x 4 B) and labels; not the whole cache. GPU work: a head
  on cached features is negligible (:data:`HEAD_GFLOP` per image and epoch); an unfrozen
  vision tower (``unfreeze_vision``) or the end-to-end ``clip_ft`` runs forward + backward
  (3 x GFLOP) per image and epoch, keeps "sum out" per image of the batch and Adam's fp32
  state (16 B per parameter); RCNn's MSSA runs the tower over 1 + sum(g^2) snippets of each
  test image; C2SRT's teacher reads the patch cache (streamed) once per epoch.
- ``corpus``, ``relations``, ``table``, ``agreement``, ``report``: small (a few MB).

Image counts are the release's published sizes (:data:`RELEASE_SIZES`: upper bounds, the
prepared splits drop images without labels) or a generated world's ``n_train`` / ``n_test``
options; nothing on disk is read, so the plan is the same before and after a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines.config import Params, backbone_embed_dim, split_seed
from pipelines.graph import Stage, build_graph

GB = 10**9
GIB = 2**30


@dataclass(frozen=True)
class TowerCost:
    gflop: float
    params_m: float
    largest_out_mb: float
    sum_out_mb: float
    n_patches: int


# bench/bench_flops.py (meta device, counted): see the module docstring
TOWERS: dict[str, TowerCost] = {
    "ViT-B-16": TowerCost(35.13, 86.2, 9.44, 1001.1, 196),
    "ViT-B-32": TowerCost(8.82, 87.8, 9.44, 486.4, 49),
    "RN50": TowerCost(12.22, 38.3, 16.78, 245.2, 49),
    "RN101": TowerCost(19.54, 56.3, 16.78, 316.1, 49),
    "torchvision:vgg19": TowerCost(39.02, 20.0, 12.85, 136.9, 196),
}
TEXT_TOWER = TowerCost(5.96, 63.4, 4.19, 307.6, 0)
UNKNOWN_TOWER = TowerCost(35.13, 86.2, 9.44, 1001.1, 196)  # an unlisted tower: as ViT-B-16
GPU_TFLOPS = {"fp32": 67.0, "fp16": 989.0, "bf16": 989.0}  # H100 SXM peak (datasheet)
UTILISATION = 0.4  # assumed sustained fraction of peak
JPEG_BYTES = 25_000  # assumed mean JPEG at short side 256
HEAD_GFLOP = 0.05  # assumed: a head on cached tokens, per image and epoch (fwd + bwd)
SHARD_IMAGES = 4096  # pipelines/vlp/features.py SHARD_SIZE (kept torch-free here)

# (train images, test images, labels) of each release as published (upper bounds: the
# prepared splits drop images without labels)
RELEASE_SIZES: dict[str, tuple[int, int, int]] = {
    "nus-wide": (161_789, 107_859, 1_006),  # NUS-WIDE: 925 tags + 81 concepts
    "open-images-v4": (9_011_219, 125_436, 7_586),  # v4: 7,186 trainable + 400 unseen
    "coco": (82_783, 40_504, 80),  # COCO 2014 train / val
    "coco-zsl": (82_783, 40_504, 65),  # 48 seen + 17 unseen
    "voc2007": (5_011, 4_952, 20),  # trainval / test
}


def human(n: float) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class StageNeed:
    stage: str
    writes: int  # bytes
    memory: int  # peak host bytes
    gpu_memory: int  # peak bytes on one GPU
    gpu_hours: float
    how: str  # what the numbers assume, in a few words

    def exceeds(self, node: Any) -> list[str]:
        """What this stage needs beyond ``node`` (config ``NodeConfig``), one line each."""
        checks = [
            ("disk", self.writes, node.disk_bytes),
            ("memory", self.memory, node.memory_bytes),
            ("gpu_memory", self.gpu_memory, node.gpu_memory_bytes),
        ]
        return [
            f"{self.stage}: needs {human(need)} of {what}, the node has {human(limit)} "
            f"(cluster.node.{what})"
            for what, need, limit in checks
            if need > limit
        ]


class CapacityError(RuntimeError):
    """A stage needs more than the declared node offers."""


def _sizes(params: Params, dataset: str) -> tuple[int, int, int]:
    cfg = params.datasets[dataset]
    if cfg.source in RELEASE_SIZES:
        n_train, n_test, n_labels = RELEASE_SIZES[cfg.source]
        if cfg.options.get("label_set") == "concepts81":
            n_labels = 81
        return n_train, n_test, n_labels
    opts = cfg.options
    defaults = (3000, 1500) if cfg.source == "iconworld" else (2000, 1000)
    n_train = int(opts.get("n_train", defaults[0])) + int(opts.get("n_pretrain", 0))
    return n_train, int(opts.get("n_test", defaults[1])), int(opts.get("n_labels", 100))


def _tower(params: Params, backbone: str) -> tuple[TowerCost, int, float]:
    """The tower's costs, its token width and the sustained TFLOPS at its precision."""
    bb = params.backbones[backbone]
    tower = TOWERS.get(bb.model, UNKNOWN_TOWER)
    dim = 512 if bb.model.startswith("torchvision:") else backbone_embed_dim(bb.model) or 512
    return tower, dim, GPU_TFLOPS[bb.precision] * UTILISATION


def _gpu_hours(gflop_total: float, tflops: float) -> float:
    return gflop_total * 1e9 / (tflops * 1e12) / 3600


def _features(params: Params, dataset: str, backbone: str) -> StageNeed:
    n_train, n_test, _ = _sizes(params, dataset)
    tower, dim, tflops = _tower(params, backbone)
    bb = params.backbones[backbone]
    per_image = (1 + tower.n_patches) * dim * 2
    n = n_train + n_test
    weights = int(tower.params_m * 1e6 * 4)
    batch = bb.batch_size
    return StageNeed(
        stage=f"features@{dataset}@{backbone}",
        writes=n * per_image,
        memory=2 * SHARD_IMAGES * per_image + weights + batch * 224 * 224 * 3 * 2,
        gpu_memory=weights + int(batch * 4 * tower.largest_out_mb * 1e6),
        gpu_hours=_gpu_hours(n * tower.gflop, tflops),
        how=f"{n:,} images x (1+{tower.n_patches}) x {dim} fp16; 1 forward each",
    )


def _cell(params: Params, dataset: str, cell: str) -> StageNeed:
    variant = split_seed(cell)[0]
    v = params.variants[variant]
    opts = v.options
    backbone = v.backbone or params.datasets[dataset].backbone
    n_train, n_test, n_labels = _sizes(params, dataset)
    tower, dim, tflops = _tower(params, backbone)
    train = opts.get("train") or {}
    epochs = int(train.get("epochs", 10))
    batch = int(train.get("batch_size", 64))
    shard = SHARD_IMAGES * (1 + tower.n_patches) * dim * 2
    scores = n_test * n_labels * (4 + 1)
    memory = 2 * shard + scores + int((tower.params_m + TEXT_TOWER.params_m) * 1e6 * 4)
    gpu_memory = (
        int((tower.params_m + TEXT_TOWER.params_m) * 1e6 * 4) + batch * shard // SHARD_IMAGES
    )
    gflop = epochs * n_train * HEAD_GFLOP + n_labels * TEXT_TOWER.gflop
    how = f"head on streamed features, {epochs} epochs"
    end_to_end = v.method == "clip_ft" or opts.get("unfreeze_vision")
    if end_to_end:
        gflop += epochs * n_train * 3 * tower.gflop + n_test * tower.gflop
        gpu_memory += int(batch * tower.sum_out_mb * 1e6 + tower.params_m * 1e6 * 16)
        how = f"vision tower trained, {epochs} epochs x {n_train:,} images, batch {batch}"
    if v.method == "rcnn":
        grids = opts.get("snippet_grids", [2])
        snippets = 1 + sum(int(g) ** 2 for g in grids)
        gflop += n_test * snippets * tower.gflop
        gpu_memory += int(params.backbones[backbone].batch_size * 4 * tower.largest_out_mb * 1e6)
        how = f"text-only training; {snippets} tower passes per test image (MSSA)"
    weights = int(tower.params_m * 1e6 * 4) if end_to_end else 64 * 10**6
    return StageNeed(
        stage=f"cell@{dataset}@{cell}",
        writes=n_test * n_labels * 4 + weights,
        memory=memory,
        gpu_memory=gpu_memory,
        gpu_hours=_gpu_hours(gflop, tflops),
        how=how,
    )


def estimate(params: Params, stage: Stage) -> StageNeed:
    """The estimated needs of one graph stage (see the module docstring)."""
    small = StageNeed(stage.name, 10 * 10**6, 2 * GIB, 0, 0.0, "small")
    if stage.kind == "features":
        return _features(params, *stage.key)
    if stage.kind == "cell":
        return _cell(params, *stage.key)
    if stage.kind == "dataset":
        n_train, n_test, n_labels = _sizes(params, stage.key[0])
        n = n_train + n_test
        return StageNeed(
            stage.name,
            n * (math.ceil(n_labels / 8) + 64),
            n * n_labels + GIB,
            0,
            0.0,
            f"{n:,} images x {n_labels:,} labels",
        )
    if stage.kind == "images":
        n_train, n_test, _ = _sizes(params, stage.key[0])
        n = n_train + n_test
        download = params.datasets[stage.key[0]].download
        workers = download.workers if download is not None else 16
        return StageNeed(
            stage.name, n * JPEG_BYTES, GIB + workers * 64 * 10**6, 0, 0.0,
            f"{n:,} JPEGs x {JPEG_BYTES // 1000} kB (assumed)",
        )  # fmt: skip
    return small


def capacity_plan(params: Params) -> list[StageNeed]:
    """Every stage's needs, in graph order."""
    graph = build_graph(params)
    return [estimate(params, st) for st in graph.values()]


def check_stage_fits(params: Params, stage: Stage) -> None:
    """Raise :class:`CapacityError` when ``stage`` needs more than ``cluster.node`` offers
    (the check a stage makes when it starts)."""
    problems = estimate(params, stage).exceeds(params.cluster.node)
    if problems:
        raise CapacityError(
            "; ".join(problems) + " (estimates: pipelines/capacity.py; declare a bigger "
            "cluster.node in params, or shrink the stage)"
        )
