"""ClearCLIP local tokens (RCNn Eq. 2-4) and multi-snippet crops (RCNn Eq. 9), with their
frozen-feature caches.

ViT towers (open_clip ``VisionTransformer``): blocks 1..L-1 run as usual; the L-th block
is run twice from the same input x_{L-1}:

- as trained, giving the class token x_cls^L, then ``ln_post`` and ``proj``: the global
  embedding (Eq. 3; identical to open_clip's pooled output);
- ClearCLIP's way (Eq. 2; Lan et al. 2024): no residual connection, query-query
  attention ``softmax(q q^T / sqrt(d_k)) v`` through the block's output projection, no
  FFN; the patch tokens of that attention output, through ``ln_post`` and ``proj``, are
  the local tokens (Eq. 4).

ResNet towers (open_clip ``ModifiedResNet``, CLIP's RN50...): there is no q-q attention to
swap in, so the equivalent dense tokens are the attention pool's value path per cell
(``resnet_tokens`` in backbone.py: MaskCLIP's reading, which like ClearCLIP drops the
query-key mixing and the residual), and the global embedding is the attention pool's
output. timm CNN towers with average pooling and a linear projection (the packaged
EfficientNet-Lite0 of ``icon-lit``, pipelines/vlp/towers.py): ClearCLIP's change ("remove
the residual and the FFN of the last block, attend query to query") has no counterpart,
as no attention mixes the cells and the pooling is a plain mean; the local tokens are the
last feature map's cells through the same projection as the pooled feature
(``timm_cnn_tokens`` in backbone.py), i.e. what each cell alone contributes to the global
embedding, which is their mean. Any other tower is refused with an error that says so.

Both are l2-normalised. Snippets (Eq. 9): the input is cut into a g x g grid (g = sqrt K),
each cell resized back to the input size (bicubic, as the image pipeline) and encoded
like the whole image.

Cache layout: ``<features>/<dataset>/<backbone>@<tower>/<split>/`` (``tower`` =
``clearclip`` or ``clearclip-snippets-g2-3`` ...), beside the plain feature cache::

    index.json                 n, dim, grid_hw, grids, source, code, shards, image_ids
    shard-00000.safetensors    global (n, D) | (n, K, D), local (n, N, D) | (n, K, N, D), fp16

Reading streams it (:class:`DenseStore`, memory-mapped shards read row by row, as the
plain feature cache); :class:`OnlineDense` computes the same columns from the images
when read, for caches that cannot fit a node (RCNn with ``features: online``).

``source`` is the fingerprint of the plain feature cache's stage record (so a retrained
backbone invalidates it) and ``code`` a digest of this file: a cache whose either differs is
rebuilt; otherwise it is reused and no image is encoded again.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipelines.data.images import ImageSource, batches
from pipelines.io import atomic_path, read_json, write_json
from pipelines.vlp.backbone import Backbone, resnet_tokens, timm_cnn_tokens
from pipelines.vlp.features import FeatureColumn, OnlineEncoder, ShardedStore

SHARD_SIZE = 2048
CODE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class TowerError(TypeError):
    """The image tower gives no access to its last block (not a ViT / ResNet of open_clip)."""


# ------------------------------------------------------------------------------ tokens
def clearclip_tokens(backbone: Backbone, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global (B, D), local (B, N, D)), both l2-normalised, in the joint space (Eq. 2-4)."""
    visual = backbone.model.visual
    if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        pooled, tokens = resnet_tokens(visual, pixels)
        return F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)
    if isinstance(visual, open_clip.timm_model.TimmModel):
        pooled, tokens = timm_cnn_tokens(visual, pixels)
        return F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise TowerError(
            f"{backbone.name}: RCNn's local tokens need the last block of the image tower; "
            f"{type(visual).__name__} is neither an open_clip VisionTransformer, a "
            "ModifiedResNet nor a timm CNN tower, so its last block cannot be reached"
        )
    if visual.attn_pool is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise TowerError(
            f"{backbone.name}: ClearCLIP local tokens need a class-token ViT "
            "(pool_type 'tok', no attention pool)"
        )
    blocks = visual.transformer.resblocks
    x = visual._embeds(pixels)
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    full = last(x)  # the block as trained: the class token (Eq. 1)
    attn = _qq_attention(last, last.ln_1(x), batch_first)  # Eq. 2: no residual, no FFN
    if not batch_first:
        full, attn = full.transpose(0, 1), attn.transpose(0, 1)
    cls = visual.ln_post(full[:, 0])
    local = visual.ln_post(attn[:, 1:])
    if visual.proj is not None:
        cls, local = cls @ visual.proj, local @ visual.proj
    return F.normalize(cls, dim=-1), F.normalize(local, dim=-1)


def _qq_attention(block, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Multi-head ``softmax(q q^T / sqrt(d)) v`` with the block's own projections."""
    mha: torch.nn.MultiheadAttention = block.attn
    if not batch_first:
        x = x.transpose(0, 1)
    b, n, d = x.shape
    h = mha.num_heads
    q, _, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q = q.reshape(b, n, h, d // h).transpose(1, 2)
    v = v.reshape(b, n, h, d // h).transpose(1, 2)
    w = torch.softmax(q @ q.transpose(-1, -2) * (d // h) ** -0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, d)
    out = mha.out_proj(out)
    if not batch_first:
        out = out.transpose(0, 1)
    return out


def snippets(pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, grid*grid, 3, S, S): a grid x grid row-major tiling, each tile
    resized back to S (RCNn §3.5; the reference crops int(S / grid)-pixel boxes)."""
    b, c, s, _ = pixels.shape
    w = s // grid
    tiles = [
        pixels[:, :, i * w : (i + 1) * w, j * w : (j + 1) * w]
        for i in range(grid)
        for j in range(grid)
    ]
    x = torch.stack(tiles, 1).reshape(b * grid * grid, c, w, w)
    x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)
    return x.reshape(b, grid * grid, c, s, s)


# ------------------------------------------------------------------------------- cache
def dense_tokens(
    backbone: Backbone, pixels: torch.Tensor, grids: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole image: (global (B, D), local (B, N, D)); snippets of ``grids``: (global
    (B, K, D), local (B, K, N, D)), K = sum of g^2: what a cache shard stores."""
    if not grids:
        return clearclip_tokens(backbone, pixels)
    crops = torch.cat([snippets(pixels, g) for g in grids], 1)
    b, k = crops.shape[:2]
    g, loc = clearclip_tokens(backbone, crops.flatten(0, 1))
    return g.reshape(b, k, -1), loc.reshape(b, k, *loc.shape[1:])


def _grid_hw(n_tokens: int) -> tuple[int, int]:
    side = int(math.isqrt(n_tokens))
    return side, n_tokens // side


class DenseStore(ShardedStore):
    """One split's ClearCLIP cache, streamed (pipelines/vlp/features.py): ``global_``
    (N, D) | (N, K, D) and ``local`` (N, P, D) | (N, K, P, D) columns, fp16."""

    kind = "ClearCLIP feature cache"

    def __init__(self, split_dir: Path, **kw):
        super().__init__(split_dir, ("global", "local"), **kw)
        if not self.n:
            raise ValueError(f"{self.split_dir}: the ClearCLIP cache holds no images")
        self.grid_hw = tuple(int(x) for x in self.info["grid_hw"])
        self.grids = tuple(int(g) for g in self.info.get("grids", []))

    def _rebuild(self) -> str:
        return "RCNn rebuilds it when its cell runs again (delete the folder)"

    @property
    def global_(self) -> FeatureColumn:
        return self.column("global")

    @property
    def local(self) -> FeatureColumn:
        return self.column("local")


class OnlineDense(OnlineEncoder):
    """The same columns as :class:`DenseStore`, computed from the split's images by the
    frozen backbone when read (RCNn's online mode: no dense cache on disk)."""

    parts_present = ("global", "local")

    def __init__(self, backbone: Backbone, source: ImageSource, grids: tuple[int, ...] = ()):
        super().__init__(backbone, source)
        self.grids = tuple(grids)

    def encode(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        g, loc = dense_tokens(self.backbone, pixels, self.grids)
        return {"global": g, "local": loc}

    @property
    def grid_hw(self) -> tuple[int, int]:
        return _grid_hw(self.row_shape("local")[-2])

    @property
    def global_(self) -> FeatureColumn:
        return self.column("global")

    @property
    def local(self) -> FeatureColumn:
        return self.column("local")


def tower_name(grids: tuple[int, ...] = ()) -> str:
    return "clearclip" if not grids else "clearclip-snippets-g" + "-".join(map(str, grids))


def extract_dense(
    backbone: Backbone,
    source: ImageSource,
    out_dir: Path,
    *,
    grids: tuple[int, ...] = (),
    source_fingerprint: str = "",
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "clearclip",
) -> dict:
    """Encode ``source`` (whole images, or their snippets for each grid) and write fp16
    shards atomically."""
    shards: list[dict] = []
    buf_g: list[torch.Tensor] = []
    buf_l: list[torch.Tensor] = []
    grid_hw = (0, 0)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)

        def flush() -> None:
            nonlocal buf_g, buf_l
            if not buf_g:
                return
            g, loc = torch.cat(buf_g), torch.cat(buf_l)
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"global": g.contiguous(), "local": loc.contiguous()}, str(tmp / name))
            shards.append({"file": name, "start": sum(s["n"] for s in shards), "n": len(g)})
            buf_g, buf_l = [], []

        bar = tqdm(total=len(source), desc=desc, disable=not progress, unit="img")
        with torch.no_grad():
            for _, imgs in batches(source, batch_size, backbone.image_size):
                g, loc = dense_tokens(backbone, backbone.uint8_to_tensor(imgs), grids)
                grid_hw = _grid_hw(loc.shape[-2])
                buf_g.append(g.to("cpu", torch.float16))
                buf_l.append(loc.to("cpu", torch.float16))
                bar.update(len(imgs))
                if sum(x.shape[0] for x in buf_g) >= SHARD_SIZE:
                    flush()
        flush()
        bar.close()
        info = {
            "n": len(source),
            "dim": backbone.embed_dim,
            "grid_hw": list(grid_hw),
            "grids": list(grids),
            "backbone": backbone.name,
            "source": source_fingerprint,
            "code": CODE_DIGEST,
            "shards": shards,
            "image_ids": [str(x) for x in source.image_ids],
        }
        write_json(tmp / "index.json", info)
    return info


def cache_is_valid(
    split_dir: Path, source_fingerprint: str, grids: tuple[int, ...], image_ids: list[str]
) -> bool:
    """Whether the cache in ``split_dir`` was built by this code, from this backbone's
    features stage, for these grids and exactly these images (in this order)."""
    index = Path(split_dir) / "index.json"
    if not index.exists():
        return False
    try:
        info = read_json(index)
    except (OSError, ValueError):
        return False
    files_ok = all((Path(split_dir) / s["file"]).exists() for s in info.get("shards", []))
    return (
        files_ok
        and info.get("source") == source_fingerprint
        and info.get("code") == CODE_DIGEST
        and tuple(info.get("grids", [])) == tuple(grids)
        and info.get("image_ids") == list(image_ids)
    )


def load_dense(split_dir: Path) -> DenseStore:
    """Open one split's ClearCLIP cache for streaming (reads headers only)."""
    return DenseStore(Path(split_dir))
