"""Frozen-backbone feature cache: computed once per (dataset, backbone, split).

Layout of ``<features>/<dataset>/<backbone>/<split>/``::

    index.json                 n, dim, n_patches, shards [{file, start, n}], backbone
    shard-00000.safetensors    global (n, D) fp16 unit-norm, patches (n, P, D) fp16

Every frozen-backbone method reads these instead of running the backbone each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pipelines.data.images import ImageSource, batches
from pipelines.io import atomic_path, read_json, write_json
from pipelines.vlp.backbone import Backbone

SHARD_SIZE = 4096


@dataclass
class Features:
    """Cached features of one split, loaded in memory (fp16)."""

    global_: torch.Tensor  # (N, D)
    patches: torch.Tensor  # (N, P, D)
    image_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.global_.shape[0])


def extract_features(
    backbone: Backbone,
    source: ImageSource,
    out_dir: Path,
    *,
    batch_size: int = 256,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
    desc: str = "features",
) -> dict:
    """Run the frozen backbone over ``source`` and write fp16 shards atomically."""
    if shard_size % batch_size:
        shard_size = max(batch_size, shard_size - shard_size % batch_size)
    shards: list[dict] = []
    buf_g: list[torch.Tensor] = []
    buf_p: list[torch.Tensor] = []
    n_done = 0
    info: dict = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)

        def flush() -> None:
            nonlocal buf_g, buf_p
            if not buf_g:
                return
            g, p = torch.cat(buf_g), torch.cat(buf_p)
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"global": g.contiguous(), "patches": p.contiguous()}, str(tmp / name))
            start = sum(s["n"] for s in shards)
            shards.append({"file": name, "start": start, "n": int(g.shape[0])})
            buf_g, buf_p = [], []

        bar = tqdm(total=len(source), desc=desc, disable=not progress, unit="img")
        for _, imgs in batches(source, batch_size, backbone.image_size):
            g, p = backbone.encode_images(backbone.uint8_to_tensor(imgs))
            buf_g.append(g.to("cpu", torch.float16))
            buf_p.append(p.to("cpu", torch.float16))
            n_done += len(imgs)
            bar.update(len(imgs))
            if sum(x.shape[0] for x in buf_g) >= shard_size:
                flush()
        flush()
        bar.close()
        first = load_file(str(tmp / shards[0]["file"])) if shards else None
        info = {
            "n": n_done,
            "dim": int(first["global"].shape[1]) if first else 0,
            "n_patches": int(first["patches"].shape[1]) if first else 0,
            "backbone": backbone.name,
            "transform": tf.record(backbone.image_size)
            if (tf := getattr(source, "transform", None)) is not None
            else None,
            "shards": shards,
            "image_ids": [str(x) for x in source.image_ids],
        }
        write_json(tmp / "index.json", info)
    return info


def _rebuild(split_dir: Path) -> str:
    """Which stage rebuilds a feature cache (``<features>/<dataset>/<backbone>/<split>``)."""
    ds, bb = split_dir.parent.parent.name, split_dir.parent.name
    return (
        f"it is made by stage features@{ds}@{bb}: rebuild it with `ovml stage features {ds} {bb}`"
    )


def load_features(split_dir: Path, *, patches: bool = True) -> Features:
    split_dir = Path(split_dir)
    if not (split_dir / "index.json").exists():
        raise FileNotFoundError(
            f"{split_dir}: no feature cache here (index.json missing); run the features stage"
        )
    try:
        info = read_json(split_dir / "index.json")
    except ValueError as err:
        raise ValueError(
            f"{split_dir / 'index.json'}: unreadable ({err}); {_rebuild(split_dir)}"
        ) from None
    gs, ps = [], []
    for shard in info["shards"]:
        path = split_dir / shard["file"]
        try:
            t = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: feature shard missing; {_rebuild(split_dir)}"
            ) from None
        except Exception as err:  # SafetensorError on a truncated or corrupt shard
            raise ValueError(
                f"{path}: corrupt feature shard ({err}); {_rebuild(split_dir)}"
            ) from None
        if int(t["global"].shape[0]) != shard["n"]:
            raise ValueError(
                f"{path}: {t['global'].shape[0]} rows, index.json says {shard['n']}; "
                + _rebuild(split_dir)
            )
        gs.append(t["global"])
        if patches:
            ps.append(t["patches"])
    g = torch.cat(gs) if gs else torch.empty(0, info["dim"], dtype=torch.float16)
    p = torch.cat(ps) if ps else torch.empty(0, info["n_patches"], info["dim"], dtype=torch.float16)
    return Features(g, p, np.asarray(info["image_ids"]))
