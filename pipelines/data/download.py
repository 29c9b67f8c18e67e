"""Resumable, fault-tolerant image downloader for URL manifests (NUS-WIDE, Open Images).

Flickr links rot: a large share of the URLs in these manifests are dead (404/410/403, or a
redirect to Flickr's "photo unavailable" placeholder), and the live ones fail transiently
(timeouts, 5xx, 429, resets). :func:`download_images` fetches a manifest into webdataset
shards and records exactly one ledger row per manifest row saying what happened.

Output layout (``out_dir``)::

    shards/shard-00000.tar   committed shards: <key>.<ext> (image bytes) + <key>.json
    ledger.parquet           one row per manifest row (written atomically at the end)
    summary.json             counts per status, fraction available (DVC metrics file)
    _state/                  journal.jsonl, manifest.parquet, options.json, lock

Why not img2dataset: it retries every failure (404s included) immediately with no backoff,
ignores Retry-After, has no per-host limit and no body-size cap, numbers its keys instead of
keeping ``image_id``, cannot detect the Flickr placeholder, and resumes whole shards only
(everything in an unfinished shard is fetched again). See ``bench/bench_download.py``.

Crash safety (SIGKILL at any moment):

* A shard is written as ``shards/shard-N.tar.tmp``, flushed after every sample, then
  fsynced and renamed to ``shard-N.tar``: only complete shards carry the final name.
* After a rename, the shard's rows are appended to ``_state/journal.jsonl`` (fsynced).
  Failures are journaled as they happen. A truncated last journal line is dropped.
* On restart: final shards missing from the journal are re-read (each sample's ``.json``
  member holds its full ledger row); complete samples in leftover ``.tar.tmp`` files are
  salvaged into a new shard instead of being fetched again; everything else that is not
  ``ok`` (or dead, unless ``retry_dead``) is fetched again. ``attempts`` accumulate across runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import fcntl
import hashlib
import importlib.util
import io
import ipaddress
import json
import os
import random
import re
import socket
import sys
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import polars as pl
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from pipelines.io import atomic_path, safe_name, write_json
from pipelines.redact import redact, strip_credentials

__all__ = [
    "DEAD_STATUSES",
    "FLICKR_PLACEHOLDER_SHA256",
    "STATUSES",
    "TRANSIENT_STATUSES",
    "DownloadConfig",
    "DownloadSummary",
    "ManifestError",
    "download_images",
    "load_manifest",
    "make_keys",
    "parse_retry_after",
    "rebuild_ledger",
    "summarize_ledger",
]

# --------------------------------------------------------------------------- statuses

OK = "ok"
DEAD_HTTP = "dead_http"  # 4xx other than 408/429 (404, 410, 403, ...), odd 3xx, too many hops
DEAD_PLACEHOLDER = "dead_placeholder"  # Flickr "photo unavailable": by redirect URL or body hash
DEAD_MD5 = "dead_md5_mismatch"
DEAD_NOT_IMAGE = "dead_not_image"  # HTML, truncated/corrupt image, anything PIL cannot decode
DEAD_TOO_LARGE = "dead_too_large"  # body (or Content-Length) over the cap, decompression bomb
DEAD_BAD_URL = "dead_bad_url"  # not an http(s) URL; never requested
DEAD_BLOCKED_HOST = "dead_blocked_host"  # loopback/private/link-local address (SSRF guard)
TRANSIENT_TIMEOUT = "transient_timeout"
TRANSIENT_HTTP = "transient_http"  # 5xx, 429, 408 after the retry budget
TRANSIENT_CONNECTION = "transient_connection"  # refused, reset, closed without a response

STATUSES = (
    OK,
    DEAD_HTTP,
    DEAD_PLACEHOLDER,
    DEAD_MD5,
    DEAD_NOT_IMAGE,
    DEAD_TOO_LARGE,
    DEAD_BAD_URL,
    DEAD_BLOCKED_HOST,
    TRANSIENT_TIMEOUT,
    TRANSIENT_HTTP,
    TRANSIENT_CONNECTION,
)
DEAD_STATUSES = frozenset(s for s in STATUSES if s.startswith("dead_"))
TRANSIENT_STATUSES = frozenset(s for s in STATUSES if s.startswith("transient_"))

#: sha256 of Flickr's "This photo is no longer available" image (3,344 bytes; a PNG even
#: though NUS-WIDE ships it as ``flickr_unavailable_placeholder.jpg``).
FLICKR_PLACEHOLDER_SHA256 = "e29a55808b2b6bb0681116206863eda419e5012384ed75bda880bf87e440676f"

LEDGER_SCHEMA: dict[str, Any] = {
    "image_id": pl.Utf8,
    "url": pl.Utf8,
    "status": pl.Utf8,
    "attempts": pl.Int32,
    "http_status": pl.Int32,
    "bytes": pl.Int64,
    "sha256": pl.Utf8,
    "shard": pl.Utf8,
    "error": pl.Utf8,
    "key": pl.Utf8,
}
_LEDGER_FIELDS = tuple(LEDGER_SCHEMA)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_HTTP_CODES = frozenset({408, 425, 429})
_FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.tar$")
_LANE = 4  # workers sharing one httpx client (connection pool)


class DownloadConfig(BaseModel):
    """Knobs of the downloader. Times are in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(30.0, gt=0, description="max silence between two reads")
    total_timeout: float = Field(120.0, gt=0, description="max time for one request (per hop)")
    per_host_connections: int = Field(8, ge=1, description="concurrent requests per host")
    max_retries: int = Field(3, ge=0, description="extra attempts after a transient failure")
    backoff_base: float = Field(1.0, ge=0, description="first retry delay; doubles each time")
    backoff_max: float = Field(60.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1, description="delay *= 1 - jitter * U(0, 1)")
    retry_after_max: float = Field(120.0, ge=0, description="cap on an honoured Retry-After")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_redirects: int = Field(5, ge=0)
    shard_size: int = Field(1000, ge=1, description="images per shard")
    user_agent: str = "ovml-image-downloader/0.1 (research; zero-shot multi-label recognition)"
    placeholder_sha256: tuple[str, ...] = (FLICKR_PLACEHOLDER_SHA256,)
    placeholder_url_markers: tuple[str, ...] = ("photo_unavailable",)
    jpeg_quality: int = Field(90, ge=1, le=100, description="for --resize re-encoding")
    decode_threads: int = Field(0, ge=0, description="image check/resize threads; 0 = auto")
    trust_env: bool = Field(True, description="honour HTTP(S)_PROXY / NO_PROXY")
    allow_private_hosts: bool = Field(
        False,
        description="fetch from loopback, private, link-local and other non-public addresses "
        "(refused by default, on every redirect hop: a manifest must not reach internal services)",
    )
    seed: int | None = Field(None, description="seed for the backoff jitter (tests)")


# --------------------------------------------------------------------------- summary


@dataclass
class DownloadSummary:
    """Counts per status over the whole ledger, plus what this run did."""

    total: int
    counts: dict[str, int]
    bytes: int = 0
    elapsed_s: float = 0.0
    processed: int = 0  # rows settled by this run (fetched or salvaged)
    salvaged: int = 0  # rows recovered from an interrupted run's unfinished shard
    requests: int = 0  # HTTP requests sent by this run (redirect hops count)
    shards: int = 0
    pending: int = 0  # rows with no outcome yet (only when read from an unfinished run)

    @property
    def ok(self) -> int:
        return self.counts.get(OK, 0)

    @property
    def dead(self) -> int:
        return sum(n for s, n in self.counts.items() if s in DEAD_STATUSES)

    @property
    def transient(self) -> int:
        return sum(n for s, n in self.counts.items() if s in TRANSIENT_STATUSES)

    @property
    def fraction_available(self) -> float:
        return self.ok / self.total if self.total else 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "dead": self.dead,
            "transient": self.transient,
            "pending": self.pending,
            "fraction_available": round(self.fraction_available, 6),
            "counts": {s: int(self.counts.get(s, 0)) for s in STATUSES}
            | {s: int(n) for s, n in self.counts.items() if s not in STATUSES},
            "bytes": int(self.bytes),
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 2),
            "processed": self.processed,
            "salvaged": self.salvaged,
            "requests": self.requests,
            "shards": self.shards,
        }

    def headline(self) -> str:
        return (
            f"download: {self.ok}/{self.total} available ({self.fraction_available:.1%}); "
            f"{self.bytes / 1e6:.1f} MB in {self.shards} shard(s); this run: {self.processed} "
            f"rows ({self.salvaged} salvaged), {self.requests} requests, {self.elapsed_s:.1f} s"
        )

    def render(self) -> Any:
        """A rich Table of the counts per status."""
        from rich.table import Table

        table = Table(title="download summary")
        table.add_column("status")
        table.add_column("rows", justify="right")
        table.add_column("share", justify="right")
        for status, n in self.to_dict()["counts"].items():
            if n:
                table.add_row(status, str(n), f"{n / self.total:.1%}" if self.total else "-")
        if self.pending:
            table.add_row("pending", str(self.pending), f"{self.pending / self.total:.1%}")
        table.add_section()
        table.add_row("available", str(self.ok), f"{self.fraction_available:.1%}")
        return table

    def print(self) -> None:
        from rich.console import Console

        console = Console()
        console.print(self.render())
        console.print(self.headline(), soft_wrap=True, highlight=False)


def _summary_from_frame(ledger: pl.DataFrame, **extra: Any) -> DownloadSummary:
    counts = {row["status"]: int(row["len"]) for row in ledger.group_by("status").len().to_dicts()}
    pending = counts.pop("pending", 0)
    ok = ledger.filter(pl.col("status") == OK)
    return DownloadSummary(
        total=ledger.height,
        counts=counts,
        bytes=int(ok["bytes"].sum() or 0),
        shards=int(ok["shard"].n_unique()) if ok.height else 0,
        pending=pending,
        **extra,
    )


def rebuild_ledger(out_dir: str | os.PathLike[str]) -> pl.DataFrame:
    """The ledger as the journal has it now (usable while a run is going or after a kill):
    one row per manifest row, ``status == "pending"`` for rows with no outcome yet."""
    out_dir = Path(out_dir)
    state = out_dir / "_state"
    if not (state / "manifest.parquet").exists():
        raise FileNotFoundError(f"{out_dir} holds no download journal")
    manifest = pl.read_parquet(state / "manifest.parquet")
    records, _ = _replay_journal(state / "journal.jsonl", out_dir / "shards")
    return _ledger_frame(manifest, records, pending=True)


def summarize_ledger(out_dir: str | os.PathLike[str]) -> DownloadSummary:
    """Summarise ``out_dir/ledger.parquet``, or for an unfinished run what the journal holds
    (see :func:`rebuild_ledger`). Per-run figures (elapsed, requests) are left at zero."""
    ledger_path = Path(out_dir) / "ledger.parquet"
    if ledger_path.exists():
        return _summary_from_frame(pl.read_parquet(ledger_path))
    return _summary_from_frame(rebuild_ledger(out_dir))


# --------------------------------------------------------------------------- manifest


class ManifestError(ValueError):
    """The manifest cannot be downloaded as it is; the message says where and what to do."""


def _parse_md5(value: Any) -> bytes | None:
    if value is None:
        return None
    s = str(value).strip()
    if not s:
        return None
    if len(s) == 32:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(s)
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise ValueError(f"not an MD5 in hex (32 chars) or base64 (24 chars): {s!r}")
    return raw


def load_manifest(manifest: str | os.PathLike[str] | pl.DataFrame) -> pl.DataFrame:
    """Read and validate a manifest (CSV/TSV/parquet path or DataFrame).

    Returns a frame with string columns ``image_id``, ``url``, ``md5`` (nullable; hex or
    base64 as published). Every problem found is reported in one :class:`ManifestError`.
    """
    if isinstance(manifest, pl.DataFrame):
        df, source, is_csv = manifest, "manifest DataFrame", False
    else:
        path = Path(manifest)
        source = str(path)
        suffixes = "".join(path.suffixes[-2:]).lower()
        if not path.exists():
            raise ManifestError(f"manifest {source} does not exist")
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                df, is_csv = pl.read_parquet(path), False
            elif path.suffix.lower() in (".csv", ".tsv") or suffixes in (".csv.gz", ".tsv.gz"):
                sep = "\t" if ".tsv" in suffixes else ","
                df, is_csv = pl.read_csv(path, separator=sep, infer_schema=False), True
            else:
                raise ManifestError(
                    f"manifest {source}: unknown file type; give a .csv, .tsv or .parquet file"
                )
        except ManifestError:
            raise
        except Exception as exc:  # polars raises several types for unreadable files
            raise ManifestError(f"manifest {source} could not be read: {exc}") from exc

    missing = [c for c in ("image_id", "url") if c not in df.columns]
    if missing:
        hint = ""
        if {"ImageID", "OriginalURL"} & set(df.columns):
            hint = " (Open Images: rename ImageID->image_id, OriginalURL->url, OriginalMD5->md5)"
        raise ManifestError(
            f"manifest {source} is missing required column(s) {missing}; found {df.columns}. "
            f"A manifest needs columns image_id and url, and optionally md5{hint}."
        )
    cols = [pl.col("image_id").cast(pl.Utf8), pl.col("url").cast(pl.Utf8).str.strip_chars()]
    cols.append(pl.col("md5").cast(pl.Utf8) if "md5" in df.columns else pl.lit(None, pl.Utf8))
    df = df.select(cols[0], cols[1], cols[2].alias("md5"))

    def where(rows: list[int]) -> str:
        shown = ", ".join(f"row {r + 1}" + (f" (line {r + 2})" if is_csv else "") for r in rows[:5])
        return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")

    problems: list[str] = []
    ids, urls, md5s = df["image_id"].to_list(), df["url"].to_list(), df["md5"].to_list()
    empty_ids = [i for i, v in enumerate(ids) if v is None or not v.strip()]
    if empty_ids:
        problems.append(
            f"{len(empty_ids)} row(s) have an empty image_id: {where(empty_ids)}; "
            "give every row a unique image_id"
        )
    first_seen: dict[str, int] = {}
    dups: list[str] = []
    n_dups = 0
    for i, v in enumerate(ids):
        if v is None or not v.strip():
            continue
        if v in first_seen:
            n_dups += 1
            if len(dups) < 5:
                dups.append(f"{v!r} at row {first_seen[v] + 1} and row {i + 1}")
        else:
            first_seen[v] = i
    if n_dups:
        more = f" and {n_dups - len(dups)} more" if n_dups > len(dups) else ""
        problems.append(
            f"{n_dups} duplicate image_id row(s): {'; '.join(dups)}{more}; "
            "drop the duplicate rows or make the ids unique"
        )
    empty_urls = [i for i, v in enumerate(urls) if v is None or not v]
    if empty_urls:
        problems.append(
            f"{len(empty_urls)} row(s) have an empty url: {where(empty_urls)}; "
            "drop those rows from the manifest (they cannot be downloaded)"
        )
    bad_md5 = []
    for i, v in enumerate(md5s):
        try:
            _parse_md5(v)
        except ValueError:
            bad_md5.append(i)
    if bad_md5:
        problems.append(
            f"{len(bad_md5)} row(s) have an md5 that is neither 32 hex characters nor base64 of "
            f"16 bytes: {where(bad_md5)}; fix or blank those md5 values"
        )
    if problems:
        raise ManifestError(
            f"invalid manifest {source} ({df.height} rows):\n  - " + "\n  - ".join(problems)
        )
    return df


def make_keys(image_ids: list[str]) -> list[str]:
    """Shard keys for image ids: :func:`safe_name` without dots (webdataset splits the key from
    the extension at the first dot). Ids that collide after sanitising all get a hash suffix,
    so a key never depends on which of the colliding rows came first."""
    base = [safe_name(i, max_len=100).replace(".", "_") for i in image_ids]
    counts = Counter(base)
    keys: list[str] = []
    used: set[str] = set()
    for image_id, b in zip(image_ids, base, strict=True):
        key = b
        if counts[b] > 1 or key in used:
            digest = hashlib.sha256(image_id.encode()).hexdigest()
            n = 10
            key = f"{b[:100]}_{digest[:n]}"
            while key in used:  # practically unreachable; keeps keys unique regardless
                n += 4
                key = f"{b[:100]}_{digest[:n]}"
        used.add(key)
        keys.append(key)
    return keys


# --------------------------------------------------------------------------- HTTP helpers


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent
    or unparseable. Past dates give 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int, config: DownloadConfig, retry_after: float | None, rng: random.Random
) -> float:
    """Delay before attempt ``attempt + 1``: exponential with jitter, never shorter than an
    honoured (capped) Retry-After."""
    delay = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1))
    delay *= 1.0 - config.jitter * rng.random()
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.retry_after_max))
    return delay


@dataclass
class _Fetch:
    status: str
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    retry_after: float | None = None
    nbytes: int | None = None
    sent: bool = True  # False when the URL was rejected before any request


@dataclass
class _Row:
    index: int
    image_id: str
    url: str
    md5: bytes | None
    key: str
    prior_attempts: int


# --------------------------------------------------------------------------- image checks


def _check_image(
    body: bytes, md5: bytes | None, config: DownloadConfig, resize: int | None
) -> dict[str, Any]:
    """Runs in a worker thread: placeholder / MD5 / decode checks, optional resize."""
    if hashlib.sha256(body).hexdigest() in config.placeholder_sha256:
        return {"status": DEAD_PLACEHOLDER, "error": "body is the photo-unavailable placeholder"}
    if md5 is not None:
        got = hashlib.md5(body).digest()
        if got != md5:
            return {
                "status": DEAD_MD5,
                "error": f"md5 {got.hex()} != expected {md5.hex()}",
            }
    try:
        with Image.open(io.BytesIO(body)) as im:
            fmt = im.format or "UNKNOWN"
            im.verify()
        with Image.open(io.BytesIO(body)) as im:
            width, height = source_size = im.size
            if resize is None:
                if fmt == "JPEG":
                    im.draft(im.mode, (1, 1))  # 1/8-scale decode: still reads every byte
                im.load()
                data, ext = body, _FORMAT_EXT.get(fmt, fmt.lower())
            else:
                data, (width, height) = _resize(im, fmt, body, resize, config.jpeg_quality)
                ext = "jpg"
    except Image.DecompressionBombError as exc:
        return {"status": DEAD_TOO_LARGE, "error": f"decompression bomb: {exc}"}
    except UnidentifiedImageError:
        return {"status": DEAD_NOT_IMAGE, "error": "not a recognised image format"}
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return {"status": DEAD_NOT_IMAGE, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        "status": OK,
        "data": data,
        "ext": ext,
        "format": fmt,
        "width": width,  # of what is stored
        "height": height,
        "source_width": source_size[0],
        "source_height": source_size[1],
        "sha256": hashlib.sha256(data).hexdigest(),
        "source_md5": hashlib.md5(body).hexdigest(),
        "source_bytes": len(body),
    }


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _resize(
    im: Image.Image, fmt: str, body: bytes, short_side: int, quality: int
) -> tuple[bytes, tuple[int, int]]:
    """JPEG with the short side at ``short_side`` (aspect kept, never upscaled, EXIF
    orientation applied). A JPEG that is already small enough is stored as downloaded."""
    w, h = im.size
    if min(w, h) <= short_side and fmt == "JPEG":
        im.load()
        return body, (w, h)
    orientation = im.getexif().get(0x0112)
    scale = min(1.0, short_side / min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if fmt == "JPEG":
        im.draft("RGB", size)  # DCT-domain downscale to >= size: much faster for big photos
    im.load()
    if "A" in im.mode or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        im = rgb
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS)
    if orientation in _EXIF_TRANSPOSE:
        im = im.transpose(_EXIF_TRANSPOSE[orientation])
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue(), im.size


# --------------------------------------------------------------------------- journal & shards


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Journal:
    """Append-only JSONL of ledger rows and shard commits; survives SIGKILL mid-line."""

    def __init__(self, path: Path):
        self.path = path
        _drop_partial_tail(path)
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()

    def append(self, *records: dict[str, Any], sync: bool = False) -> None:
        self._fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        self._fh.flush()  # reaches the OS now: survives SIGKILL (not a power cut)
        if sync:
            os.fsync(self._fh.fileno())

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        self._fh.close()


def _drop_partial_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        pos = size
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        if pos != size:
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())


def _replay_journal(path: Path, shard_dir: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Latest record per image_id (ok rows only while their shard exists) and the set of
    shards whose rows are all in the journal."""
    records: dict[str, dict[str, Any]] = {}
    committed: set[str] = set()
    if not path.exists():
        return records, committed
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # torn line (only possible as the last one)
            kind = rec.get("t")
            if kind == "row":
                records[rec["image_id"]] = rec
            elif kind == "commit":
                committed.add(rec["shard"])
    existing = {p.name for p in shard_dir.glob("shard-*.tar")} if shard_dir.exists() else set()
    for image_id, rec in list(records.items()):
        if rec["status"] == OK and rec.get("shard") not in existing:
            del records[image_id]  # shard deleted by hand: fetch again
    return records, committed & existing


def _tar_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    return info


class _ShardWriter:
    """Writes samples into ``shard-N.tar.tmp`` and commits (fsync + rename + journal).

    Only ever called from one thread (the I/O executor), so it needs no lock."""

    def __init__(self, shard_dir: Path, next_index: int, shard_size: int, journal: _Journal):
        self.shard_dir = shard_dir
        self.index = next_index
        self.shard_size = shard_size
        self.journal = journal
        self.committed: list[str] = []
        self._fh: Any = None
        self._tar: tarfile.TarFile | None = None
        self._rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.tar"

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, record: dict[str, Any], data: bytes, ext: str, meta: dict[str, Any]) -> str:
        if self._tar is None:
            tmp = self.shard_dir / f"{self.name}.tmp"
            self._fh = open(tmp, "wb")  # noqa: SIM115 - closed in commit()
            self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        record = {**record, "shard": self.name}
        stored = {k: v for k, v in record.items() if k != "t"}
        now = time.time()
        key = record["key"]
        self._tar.addfile(_tar_info(f"{key}.{ext}", len(data), now), io.BytesIO(data))
        # the .json member goes last: a sample is complete iff its .json member is
        meta_bytes = json.dumps({**meta, **stored}, sort_keys=True).encode()
        self._tar.addfile(_tar_info(f"{key}.json", len(meta_bytes), now), io.BytesIO(meta_bytes))
        self._fh.flush()
        self._rows.append(record)
        if len(self._rows) >= self.shard_size:
            self.commit()
        return record["shard"]

    def commit(self) -> None:
        if self._tar is None:
            return
        name = self.name
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.shard_dir / f"{name}.tmp", self.shard_dir / name)
        _fsync_dir(self.shard_dir)
        self.journal.append(
            *self._rows, {"t": "commit", "shard": name, "n": len(self._rows)}, sync=True
        )
        self.committed.append(name)
        self._tar, self._fh, self._rows = None, None, []
        self.index += 1


def _read_shard_records(path: Path) -> list[dict[str, Any]]:
    """Ledger rows stored in a committed shard's .json members."""
    out = []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                fh = tar.extractfile(member)
                if fh is not None:
                    meta = json.loads(fh.read())
                    out.append(
                        {"t": "row", **{k: meta.get(k) for k in _LEDGER_FIELDS}, "shard": path.name}
                    )
    return out


def _iter_salvage(path: Path) -> Iterator[tuple[dict[str, Any], bytes, str]]:
    """Complete, hash-checked samples of an unfinished (possibly torn) shard."""
    pending: dict[str, tuple[str, bytes]] = {}
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                src = tar.extractfile(member)
                data = src.read() if src is not None else b""
                if len(data) != member.size:
                    return
                if ext != "json":
                    pending[key] = (ext, data)
                    continue
                meta = json.loads(data)
                if key not in pending:
                    continue
                img_ext, img = pending.pop(key)
                if hashlib.sha256(img).hexdigest() == meta.get("sha256"):
                    yield meta, img, img_ext
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError):
        return  # torn tail: everything complete before it has been yielded


# --------------------------------------------------------------------------- the run


def _ledger_frame(
    manifest: pl.DataFrame, records: dict[str, dict[str, Any]], *, pending: bool = False
) -> pl.DataFrame:
    keys = make_keys(manifest["image_id"].to_list())
    rows = []
    for image_id, url, key in zip(
        manifest["image_id"].to_list(), manifest["url"].to_list(), keys, strict=True
    ):
        rec = records.get(image_id)
        if rec is None:
            if not pending:
                raise RuntimeError(f"internal error: no outcome for image_id {image_id!r}")
            rec = {"image_id": image_id, "url": url, "status": "pending", "attempts": 0, "key": key}
        row = {k: rec.get(k) for k in _LEDGER_FIELDS}
        row["url"] = strip_credentials(row["url"]) if row["url"] else row["url"]
        rows.append(row)
    return pl.DataFrame(rows, schema=LEDGER_SCHEMA, orient="row")


def _internal_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """'loopback', 'private', ... for a non-public address; None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-public"
    return None


class _Run:
    def __init__(
        self,
        rows: list[_Row],
        salvage_files: list[Path],
        known: set[str],
        manifest_urls: dict[str, str],
        writer: _ShardWriter,
        journal: _Journal,
        *,
        workers: int,
        resize: int | None,
        config: DownloadConfig,
        progress: bool,
    ):
        self.rows = rows
        self.salvage_files = salvage_files
        self.known = known  # image ids already settled as ok (never refetch)
        self.manifest_urls = manifest_urls
        self.writer = writer
        self.journal = journal
        self.workers = workers
        self.resize = resize
        self.config = config
        self.progress = progress
        self.results: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.salvaged = 0
        self.rng = random.Random(config.seed)
        self._host_sems: dict[tuple[str, str, int | None], asyncio.Semaphore] = {}
        self._host_verdicts: dict[str, str | None] = {}
        n_decode = config.decode_threads or min(4, os.cpu_count() or 1)
        self.decode_pool = ThreadPoolExecutor(n_decode, thread_name_prefix="dl-decode")
        self.io_pool = ThreadPoolExecutor(1, thread_name_prefix="dl-io")

    # -- salvage ---------------------------------------------------------------------------

    def salvage(self) -> None:
        """Move complete samples of interrupted shards into a committed shard (I/O thread)."""
        for path in self.salvage_files:
            for meta, data, ext in _iter_salvage(path):
                image_id = meta.get("image_id")
                if (
                    image_id in self.known
                    or image_id in self.results
                    or self.manifest_urls.get(image_id) != meta.get("url")
                ):
                    continue
                record = {"t": "row", **{k: meta.get(k) for k in _LEDGER_FIELDS}}
                extra = {k: v for k, v in meta.items() if k not in record}
                record["shard"] = self.writer.add(record, data, ext, extra)
                self.results[image_id] = record
                self.salvaged += 1
        self.writer.commit()
        for path in self.salvage_files:
            path.unlink(missing_ok=True)

    # -- fetching ----------------------------------------------------------------------------

    def _host_sem(self, url: httpx.URL) -> asyncio.Semaphore:
        key = (url.scheme, url.host, url.port)
        sem = self._host_sems.get(key)
        if sem is None:
            sem = self._host_sems[key] = asyncio.Semaphore(self.config.per_host_connections)
        return sem

    async def _blocked_host(self, url: httpx.URL) -> str | None:
        """Why ``url``'s host may not be fetched (None when it may): any address it resolves
        to is loopback, private, link-local, multicast, reserved or unspecified. Checked
        before every hop, redirects included, unless ``allow_private_hosts``."""
        if self.config.allow_private_hosts:
            return None
        host = url.host
        if host not in self._host_verdicts:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except (socket.gaierror, UnicodeError):
                infos = []  # unresolvable: the request itself fails and says so
            verdict = None
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if kind := _internal_kind(ip):
                    verdict = (
                        f"host {host} resolves to {ip}, a {kind} address: refused "
                        "(pass --allow-private-hosts to fetch from a local server)"
                    )
                    break
            self._host_verdicts[host] = verdict
        return self._host_verdicts[host]

    def _is_placeholder_url(self, url: str) -> bool:
        return any(m in url for m in self.config.placeholder_url_markers)

    async def _attempt(self, client: httpx.AsyncClient, url_str: str) -> _Fetch:
        cfg = self.config
        hops = 0
        try:
            url = httpx.URL(url_str)
            while True:
                if url.scheme not in ("http", "https") or not url.host:
                    return _Fetch(
                        DEAD_BAD_URL, error=f"not an http(s) URL: {str(url)[:200]}", sent=hops > 0
                    )
                if (why := await self._blocked_host(url)) is not None:
                    return _Fetch(DEAD_BLOCKED_HOST, error=why, sent=hops > 0)
                async with self._host_sem(url), asyncio.timeout(cfg.total_timeout):
                    self.requests += 1
                    request = client.build_request("GET", url)
                    response = await client.send(request, stream=True)
                    try:
                        code = response.status_code
                        if code in _REDIRECTS:
                            location = response.headers.get("location")
                            if not location:
                                return _Fetch(DEAD_HTTP, code, "redirect without Location")
                            target = urljoin(str(url), location)
                            if self._is_placeholder_url(target):
                                return _Fetch(DEAD_PLACEHOLDER, code, f"redirect to {target[:200]}")
                            hops += 1
                            if hops > cfg.max_redirects:
                                return _Fetch(DEAD_HTTP, code, "too many redirects")
                            url = httpx.URL(target)
                            continue
                        if code in _TRANSIENT_HTTP_CODES or code >= 500:
                            return _Fetch(
                                TRANSIENT_HTTP,
                                code,
                                f"HTTP {code}",
                                retry_after=parse_retry_after(response.headers.get("retry-after")),
                            )
                        if not 200 <= code < 300 or code in (204, 206):
                            return _Fetch(DEAD_HTTP, code, f"HTTP {code}")
                        if self._is_placeholder_url(str(url)):
                            return _Fetch(
                                DEAD_PLACEHOLDER, code, f"placeholder URL {str(url)[:200]}"
                            )
                        length = response.headers.get("content-length", "")
                        if length.isdigit() and int(length) > cfg.max_body_bytes:
                            return _Fetch(
                                DEAD_TOO_LARGE,
                                code,
                                f"Content-Length {length} > {cfg.max_body_bytes}",
                                nbytes=int(length),
                            )
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > cfg.max_body_bytes:
                                return _Fetch(
                                    DEAD_TOO_LARGE,
                                    code,
                                    f"body over {cfg.max_body_bytes} bytes",
                                    nbytes=len(body),
                                )
                        return _Fetch(OK, code, body=bytes(body), nbytes=len(body))
                    finally:
                        await response.aclose()
        except TimeoutError:
            return _Fetch(TRANSIENT_TIMEOUT, error=f"request took over {cfg.total_timeout:g} s")
        except httpx.TimeoutException as exc:
            return _Fetch(TRANSIENT_TIMEOUT, error=f"{type(exc).__name__}: {exc}"[:300])
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Fetch(DEAD_BAD_URL, error=f"{type(exc).__name__}: {exc}"[:300], sent=hops > 0)
        except httpx.DecodingError as exc:
            return _Fetch(DEAD_NOT_IMAGE, error=f"content decoding failed: {exc}"[:300])
        except (httpx.TransportError, OSError) as exc:
            return _Fetch(TRANSIENT_CONNECTION, error=f"{type(exc).__name__}: {exc}"[:300])

    async def _fetch(self, client: httpx.AsyncClient, row: _Row) -> tuple[_Fetch, int]:
        attempts = 0
        while True:
            result = await self._attempt(client, row.url)
            attempts += result.sent
            if result.status in TRANSIENT_STATUSES and attempts <= self.config.max_retries:
                delay = backoff_delay(attempts, self.config, result.retry_after, self.rng)
                await asyncio.sleep(delay)
                continue
            return result, attempts

    async def _handle(self, client: httpx.AsyncClient, row: _Row) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fetch, attempts = await self._fetch(client, row)
        record: dict[str, Any] = {
            "t": "row",
            "image_id": row.image_id,
            "url": strip_credentials(row.url),  # never store a user:password@ of the manifest
            "key": row.key,
            "status": fetch.status,
            "attempts": row.prior_attempts + attempts,
            "http_status": fetch.http_status,
            "bytes": fetch.nbytes,
            "sha256": None,
            "shard": None,
            "error": redact(fetch.error) if fetch.error else fetch.error,
        }
        if fetch.status == OK:
            assert fetch.body is not None
            checked = await loop.run_in_executor(
                self.decode_pool, _check_image, fetch.body, row.md5, self.config, self.resize
            )
            record["status"] = checked["status"]
            if checked["status"] != OK:
                record["error"] = checked["error"]
                record["sha256"] = hashlib.sha256(fetch.body).hexdigest()
            else:
                data = checked.pop("data")
                ext = checked.pop("ext")
                record["bytes"] = len(data)
                record["sha256"] = checked.pop("sha256")
                meta = {k: v for k, v in checked.items() if k != "status"}
                record["shard"] = await loop.run_in_executor(
                    self.io_pool, self.writer.add, record, data, ext, meta
                )
                return record
        await loop.run_in_executor(self.io_pool, self.journal.append, record)
        return record

    async def run(self) -> None:
        from tqdm.auto import tqdm

        loop = asyncio.get_running_loop()
        cfg = self.config
        if self.salvage_files:
            await loop.run_in_executor(self.io_pool, self.salvage)
        todo = iter([r for r in self.rows if r.image_id not in self.results])
        n_todo = sum(1 for r in self.rows if r.image_id not in self.results)
        if not n_todo:
            return
        counts: Counter[str] = Counter()
        bar = tqdm(
            total=n_todo,
            desc="download",
            unit="img",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        timeout = httpx.Timeout(
            connect=cfg.connect_timeout, read=cfg.read_timeout, write=cfg.read_timeout, pool=None
        )
        headers = {"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5"}
        n_workers = min(self.workers, n_todo)
        # httpcore's pool does O(connections) work per request, so one big pool costs ~3x
        # more CPU per image at 64 connections than several small ones: give every lane of
        # _LANE workers its own client (per-host limits stay global, see _host_sem).
        n_lanes = -(-n_workers // _LANE)
        last_postfix = 0.0

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal last_postfix
            for row in todo:  # one shared iterator: each row is taken exactly once
                record = await self._handle(client, row)
                self.results[row.image_id] = record
                counts[record["status"]] += 1
                bar.update(1)
                now = time.monotonic()
                if self.progress and now - last_postfix > 0.5:
                    last_postfix = now
                    bar.set_postfix(
                        ok=counts[OK],
                        dead=sum(counts[s] for s in DEAD_STATUSES),
                        transient=sum(counts[s] for s in TRANSIENT_STATUSES),
                        refresh=False,
                    )

        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        timeout=timeout,
                        limits=httpx.Limits(
                            max_connections=_LANE + 2, max_keepalive_connections=_LANE + 2
                        ),
                        follow_redirects=False,
                        trust_env=cfg.trust_env,
                        headers=headers,
                    )
                )
                for _ in range(n_lanes)
            ]
            try:
                await asyncio.gather(*(worker(clients[i % n_lanes]) for i in range(n_workers)))
            finally:
                bar.close()

    def shutdown(self) -> None:
        self.decode_pool.shutdown(wait=True)
        self.io_pool.shutdown(wait=True)


def _clean_stale_tmp(out_dir: Path) -> None:
    """Remove temp dirs left by a killed atomic write (``.ledger.parquet.XXXX.tmp``)."""
    import shutil

    for base in (out_dir, out_dir / "_state"):
        for name in ("ledger.parquet", "summary.json", "manifest.parquet", "options.json"):
            for p in base.glob(f".{name}.*.tmp"):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    fh = open(state_dir / "lock", "a+")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(
                f"another download is running on {state_dir.parent} (lock {fh.name} is held)"
            ) from exc
        yield
    finally:
        fh.close()


def download_images(
    manifest: str | os.PathLike[str] | pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 16,
    resize_short_side: int | None = None,
    config: DownloadConfig | None = None,
    retry_dead: bool = False,
    progress: bool = True,
) -> DownloadSummary:
    """Download every manifest row into webdataset shards under ``out_dir`` (see module doc).

    Rerunning on the same ``out_dir`` resumes: ok rows are never fetched again, transient
    failures are retried, dead rows only with ``retry_dead=True``. Returns the summary that is
    also written to ``out_dir/summary.json`` (and printed as a table when ``progress``).
    """
    t0 = time.monotonic()
    _fast_failing_sniffio_import()
    config = config or DownloadConfig()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if resize_short_side is not None and resize_short_side < 1:
        raise ValueError(f"resize_short_side must be >= 1, got {resize_short_side}")
    df = load_manifest(manifest)
    out_dir = Path(out_dir)
    state_dir = out_dir / "_state"
    shard_dir = out_dir / "shards"
    state_dir.mkdir(parents=True, exist_ok=True)
    shard_dir.mkdir(parents=True, exist_ok=True)

    with _locked(state_dir):
        _clean_stale_tmp(out_dir)
        _check_same_job(df, state_dir, resize_short_side)

        journal_path = state_dir / "journal.jsonl"
        records, committed = _replay_journal(journal_path, shard_dir)
        journal = _Journal(journal_path)
        try:
            # committed shards whose rows never reached the journal (killed right after rename)
            finals = sorted(p for p in shard_dir.glob("shard-*.tar") if _SHARD_RE.match(p.name))
            for path in finals:
                if path.name not in committed:
                    recovered = _read_shard_records(path)
                    journal.append(
                        *recovered,
                        {"t": "commit", "shard": path.name, "n": len(recovered)},
                        sync=True,
                    )
                    for rec in recovered:
                        records[rec["image_id"]] = rec
            # unfinished shards: keep their complete samples under a name the writer won't use
            salvage_files = sorted(shard_dir.glob(".salvage-*.tar"))
            for tmp in sorted(shard_dir.glob("shard-*.tar.tmp")):
                dest = shard_dir / f".salvage-{tmp.name[:-4]}-{uuid.uuid4().hex[:8]}.tar"
                os.replace(tmp, dest)
                salvage_files.append(dest)
            if salvage_files:
                _fsync_dir(shard_dir)
            next_index = 1 + max(
                (int(m.group(1)) for p in finals if (m := _SHARD_RE.match(p.name))), default=-1
            )

            ids = df["image_id"].to_list()
            urls = df["url"].to_list()
            keys = make_keys(ids)
            rows: list[_Row] = []
            known: set[str] = set()
            for i, (image_id, url, md5, key) in enumerate(
                zip(ids, urls, df["md5"].to_list(), keys, strict=True)
            ):
                rec = records.get(image_id)
                if rec is not None and (
                    rec["status"] == OK or (rec["status"] in DEAD_STATUSES and not retry_dead)
                ):
                    if rec["status"] == OK:
                        known.add(image_id)
                    continue
                prior = int(rec.get("attempts") or 0) if rec else 0
                rows.append(_Row(i, image_id, url, _parse_md5(md5), key, prior))

            ledger_path = out_dir / "ledger.parquet"
            if rows or salvage_files:
                # the outputs describe a finished job only; they come back at the end
                ledger_path.unlink(missing_ok=True)
                (out_dir / "summary.json").unlink(missing_ok=True)

            journal.append(
                {
                    "t": "run",
                    "pid": os.getpid(),
                    "started": time.time(),
                    "todo": len(rows),
                    "salvage_files": len(salvage_files),
                }
            )
            writer = _ShardWriter(shard_dir, next_index, config.shard_size, journal)
            run = _Run(
                rows,
                salvage_files,
                known,
                dict(zip(ids, [strip_credentials(u) for u in urls], strict=True)),
                writer,
                journal,
                workers=workers,
                resize=resize_short_side,
                config=config,
                progress=progress,
            )
            try:
                asyncio.run(run.run())
            except BaseException:
                # an orderly stop (Ctrl-C, error): keep what is complete, as a committed shard
                with contextlib.suppress(Exception):
                    run.io_pool.submit(writer.commit).result()
                raise
            finally:
                run.shutdown()
            writer.commit()
            journal.sync()
            records.update(run.results)
        finally:
            journal.close()

        ledger = _ledger_frame(df, records)
        with atomic_path(ledger_path) as tmp:
            ledger.write_parquet(tmp)
        summary = _summary_from_frame(
            ledger,
            elapsed_s=time.monotonic() - t0,
            processed=len(run.results),
            salvaged=run.salvaged,
            requests=run.requests,
        )
        write_json(out_dir / "summary.json", summary.to_dict())
    if progress:
        summary.print()
    return summary


def _fast_failing_sniffio_import() -> None:
    """httpcore 1.0.x tries ``import sniffio`` for every lock it makes and anyio >= 4.11 no
    longer installs sniffio; a failed import is not cached, so each request pays a sys.path
    scan (~0.3 ms, a third of our CPU per image). Marking the absent module as None makes
    that import fail at once -- same outcome, no scan (encode/httpcore#1103). Adding
    ``sniffio`` to the dependencies makes this a no-op."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def _check_same_job(df: pl.DataFrame, state_dir: Path, resize: int | None) -> None:
    """Refuse to resume a directory started with another manifest or another --resize."""
    options = {"resize_short_side": resize}
    manifest_copy = state_dir / "manifest.parquet"
    df = df.with_columns(  # the copy keeps no credentials of the manifest's URLs
        pl.Series("url", [strip_credentials(u) for u in df["url"].to_list()], dtype=pl.Utf8)
    )
    options_path = state_dir / "options.json"
    if manifest_copy.exists():
        old = pl.read_parquet(manifest_copy)
        if not old.equals(df):
            raise ManifestError(
                f"{state_dir.parent} holds a download of a different manifest "
                f"({old.height} rows before, {df.height} now); use a new output directory or "
                "delete this one"
            )
        old_opts = json.loads(options_path.read_text()) if options_path.exists() else options
        if old_opts != options:
            raise ValueError(
                f"{state_dir.parent} was started with {old_opts}, not {options}; use a new "
                "output directory or delete this one"
            )
        return
    write_json(options_path, options)
    with atomic_path(manifest_copy) as tmp:
        df.write_parquet(tmp)
