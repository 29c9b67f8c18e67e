"""Small, safe file-system helpers: atomic writes, sanitised names, content hashes.

Every writer in the pipeline goes through these so that a crash or a kill never leaves
a half-written file where a reader (DVC, Dagster, the next stage) would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where used: Dagster's definitions load without it
    import numpy as np

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, *, max_len: int = 120) -> str:
    """Turn an arbitrary string (label, image id, URL piece) into a safe file name.

    Never returns '', '.', '..' or anything containing a path separator.
    """
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or "_"
    if len(cleaned) > max_len:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        cleaned = f"{cleaned[: max_len - 11]}_{digest}"
    return cleaned


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    Works for files and directories. The temporary name lives in the same directory so
    the final ``os.replace`` is atomic on POSIX file systems.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(final)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".tmp", dir=final.parent)
    )
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def owner_tag() -> str:
    return f"{safe_name(socket.gethostname(), max_len=40)}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(final: str | os.PathLike[str], *, max_age_s: float = 24 * 3600) -> list[Path]:
    """Remove the temporary siblings a killed :func:`atomic_path` left beside ``final``:
    ``.<name>.<host>-<pid>.*.tmp`` of a dead process on this host, and
    ``.<name>.old.<pid>`` of a dead process. Untagged ones (older ovml) go once older than
    ``max_age_s``. Returns what was removed."""
    final = Path(final)
    parent, name = final.parent, final.name
    if not parent.is_dir():
        return []
    host = safe_name(socket.gethostname(), max_len=40)
    tagged = re.compile(rf"^\.{re.escape(name)}\.(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)\..*\.tmp$")
    old = re.compile(rf"^\.{re.escape(name)}\.old\.(?P<pid>\d+)$")
    removed = []
    now = time.time()
    for p in parent.iterdir():
        if not p.name.startswith(f".{name}."):
            continue
        if m := tagged.match(p.name):
            stale = m["host"] == host and not pid_alive(int(m["pid"]))
        elif m := old.match(p.name):
            stale = not pid_alive(int(m["pid"]))
        elif p.name.endswith(".tmp"):
            try:
                stale = now - p.stat().st_mtime > max_age_s
            except OSError:
                continue
        else:
            continue
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Atomically save arrays as an uncompressed ``.npz`` (no pickled objects allowed)."""
    import numpy as np

    for key, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {key!r} has dtype=object; npz files here must not need pickle")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def world_size() -> int:
    """Processes in this torchrun job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a plain single process: the only one that writes results,
    stage stamps and MLflow runs (the other ranks only train, in DistributedDataParallel)."""
    return int(os.environ.get("RANK", "0")) == 0
