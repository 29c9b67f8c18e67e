"""Shared parsing helpers for the dataset modules.

Every reader here copes with the quirks of files as their publishers ship them: a UTF-8
byte-order mark, Windows (CRLF) or mixed line endings, Windows backslash paths, and a
missing final newline. Malformed input raises :class:`ParseError`, whose message names the
file and the line (or, for JSON, the element) and says what to do about it.

Nothing in this module writes files.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOM = "\ufeff"
BOM_BYTES = b"\xef\xbb\xbf"

DEFAULT_HINT = (
    "check that the release is complete and unmodified (re-download or re-extract it), "
    "then run the command again"
)

# ``drop_test_no_positive`` option values shared by the dataset modules.
DROP_TEST_CHOICES = ("none", "unseen", "any")


class ParseError(ValueError):
    """A release file is malformed.

    ``str(err)`` is ``"FILE:LINE: message — what to do"``. ``line`` is a 1-based line number,
    a location string for formats without useful lines (``"annotations[12]"`` in a one-line
    JSON file), or ``None`` for problems with the file as a whole (then ``"FILE: message —
    what to do"``).
    """

    def __init__(
        self,
        file: str | os.PathLike[str],
        line: int | str | None,
        message: str,
        hint: str = DEFAULT_HINT,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message} — {self.hint}"

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable (multiprocessing, dagster)
        return (type(self), (self.file, self.line, self.message, self.hint))


# --------------------------------------------------------------------------- paths


def normalize_path(path: str) -> str:
    """Turn a Windows path from a release file into a '/'-separated one (``a\\b`` → ``a/b``)."""
    return path.strip().replace("\\", "/")


def find_file(
    root: Path, candidates: Sequence[str], what: str, *, required: bool = True
) -> Path | None:
    """Locate a release file, trying each relative path in ``candidates`` in turn.

    Path components match case-insensitively when no exact match exists (releases are
    unpacked on case-insensitive file systems and re-zipped with varying case). Returns
    ``None`` for a missing optional file; raises :class:`ParseError` for a missing required one.
    """
    root = Path(root)
    for cand in candidates:
        found = _resolve_case_insensitive(root, cand)
        if found is not None:
            return found
    if not required:
        return None
    looked = ", ".join(candidates)
    raise ParseError(
        root / candidates[0],
        None,
        f"{what} not found (looked for {looked} under {root})",
        "point --release at the directory that holds the release as its publishers ship it",
    )


def _resolve_case_insensitive(root: Path, rel: str) -> Path | None:
    exact = root / rel
    if exact.is_file():
        return exact
    cur = root
    for part in Path(rel).parts:
        if not cur.is_dir():
            return None
        nxt = cur / part
        if not nxt.exists():
            lower = part.lower()
            matches = sorted(p for p in cur.iterdir() if p.name.lower() == lower)
            if not matches:
                return None
            nxt = matches[0]
        cur = nxt
    return cur if cur.is_file() else None


def find_dir(root: Path, candidates: Sequence[str]) -> Path | None:
    root = Path(root)
    for cand in candidates:
        cur: Path | None = root
        for part in Path(cand).parts:
            assert cur is not None
            nxt = cur / part
            if not nxt.is_dir():
                lower = part.lower()
                matches = (
                    sorted(p for p in cur.iterdir() if p.is_dir() and p.name.lower() == lower)
                    if cur.is_dir()
                    else []
                )
                nxt = matches[0] if matches else None
            cur = nxt
            if cur is None:
                break
        if cur is not None and cur.is_dir():
            return cur
    return None


# --------------------------------------------------------------------------- text files


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, dropping a BOM. Errors name the line of the bad byte."""
    data = Path(path).read_bytes()
    if data.startswith(BOM_BYTES):
        data = data[len(BOM_BYTES) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ParseError(
            path, line, f"not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None


def read_lines(path: Path) -> list[str]:
    """All lines of a text file without their line endings (LF, CRLF or lone CR).

    A final newline does not create an extra empty line; trailing empty lines at the end of
    the file are dropped (editors add them), interior ones are kept so callers can reject them.
    """
    text = read_text(path)
    lines = re.split(r"\r\n|\r|\n", text)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_list(path: Path, what: str, *, unique: bool = True) -> list[str]:
    """A one-item-per-line list (tags, concepts, MIDs, image paths), stripped.

    Rejects interior empty lines (they would silently shift every column after them) and,
    with ``unique``, duplicate entries.
    """
    items: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(read_lines(path), start=1):
        item = raw.strip()
        if not item:
            raise ParseError(path, lineno, f"empty line in the {what} list")
        if unique:
            if item in seen:
                raise ParseError(
                    path, lineno, f"duplicate {what} {item!r} (first on line {seen[item]})"
                )
            seen[item] = lineno
        items.append(item)
    if not items:
        raise ParseError(path, None, f"the {what} list is empty")
    return items


# --------------------------------------------------------------------------- CSV files


def iter_csv(path: Path, *, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every CSV record (header included, BOM dropped).

    Handles quoted fields with commas or newlines and any line-ending convention. The line
    number is that of the record's first line. Blank lines are yielded as ``[]``.
    """
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        start = 1
        try:
            for row in reader:
                yield start, row
                start = reader.line_num + 1
        except csv.Error as err:
            raise ParseError(path, reader.line_num, f"malformed CSV ({err})") from None
        except UnicodeDecodeError as err:
            raise ParseError(path, reader.line_num + 1, f"not valid UTF-8 ({err.reason})") from None


def check_header(path: Path, expected: Sequence[str], row: list[str] | None, line: int = 1) -> None:
    got = [c.strip() for c in row] if row is not None else None
    if got != list(expected):
        raise ParseError(
            path,
            line,
            f"unexpected header {got!r}; expected {','.join(expected)}",
            "this does not look like the file the release ships under this name; "
            "check the release version (this parser reads the 2018_04 Open Images v4 files)",
        )


def validate_csv(
    path: Path,
    header: Sequence[str],
    check: Callable[[list[str]], str | None] | None = None,
) -> int:
    """Stream a CSV with a header, checking every record's field count and ``check(fields)``.

    ``check`` returns an error message or ``None``. Returns the number of data records.
    Raises :class:`ParseError` at the first bad record.
    """
    n = 0
    it = iter_csv(path)
    first = next(it, None)
    if first is None:
        raise ParseError(path, 1, "file is empty (no header)")
    check_header(path, header, first[1], first[0])
    width = len(header)
    for lineno, row in it:
        if len(row) != width:
            raise ParseError(
                path,
                lineno,
                f"expected {width} comma-separated fields, found {len(row)}"
                + (" (empty line)" if not row else " (truncated or corrupted line?)"),
            )
        if check is not None:
            msg = check(row)
            if msg is not None:
                raise ParseError(path, lineno, msg)
        n += 1
    return n


# --------------------------------------------------------------------------- 0/1 matrices


def parse_01_rows(
    path: Path, n_rows: int, n_cols: int, *, what: str, rows_source: str
) -> np.ndarray:
    """Parse a whitespace-separated 0/1 matrix (one row per line) into ``uint8 (n_rows, n_cols)``.

    Space- and tab-separated values, trailing whitespace, CRLF and a BOM are accepted. Any
    other value, a row of the wrong width, or a file with a different number of rows raises
    :class:`ParseError` naming the line.
    """
    out = np.zeros((n_rows, n_cols), dtype=np.uint8)
    row = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(BOM_BYTES):
                raw = raw[len(BOM_BYTES) :]
            tokens = raw.split()
            if not tokens:
                # trailing blank lines are tolerated; interior ones are an error (checked below)
                out_of_rows = row >= n_rows
                if out_of_rows:
                    continue
                _blank_line_guard(path, fh, lineno, what)
                continue
            if row >= n_rows:
                raise ParseError(
                    path,
                    lineno,
                    f"more {what} rows than images: {rows_source} lists {n_rows}",
                )
            if len(tokens) != n_cols:
                raise ParseError(
                    path,
                    lineno,
                    f"expected {n_cols} values (one per {what} column), found {len(tokens)}",
                )
            joined = b"".join(tokens)
            if len(joined) != n_cols or joined.translate(None, b"01"):
                bad = next(t for t in tokens if t not in (b"0", b"1"))
                raise ParseError(
                    path, lineno, f"value {bad.decode(errors='replace')!r} is not 0 or 1"
                )
            out[row] = np.frombuffer(joined, dtype=np.uint8) - 48
            row += 1
    if row < n_rows:
        raise ParseError(
            path,
            row + 1,
            f"file ends after {row} rows but {rows_source} lists {n_rows} images (truncated file?)",
        )
    return out


def _blank_line_guard(path: Path, fh: Any, lineno: int, what: str) -> None:
    """An empty line inside a matrix is only OK if nothing but blank lines follows it."""
    for rest in fh:
        if rest.strip():
            raise ParseError(path, lineno, f"empty line inside the {what} matrix")


def parse_01_column(path: Path, n_rows: int, *, rows_source: str) -> np.ndarray:
    """Parse a one-value-per-line 0/1 file (e.g. NUS-WIDE ``Labels_<concept>.txt``) to uint8."""
    data = Path(path).read_bytes()
    if data.startswith(BOM_BYTES):
        data = data[len(BOM_BYTES) :]
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    joined = b"".join(lines)
    if len(lines) == n_rows and len(joined) == n_rows and not joined.translate(None, b"01"):
        return np.frombuffer(joined, dtype=np.uint8) - 48
    # slow path: tolerate padding whitespace, find the first real problem
    out = np.zeros(n_rows, dtype=np.uint8)
    for i, raw in enumerate(lines):
        if i >= n_rows:
            raise ParseError(path, i + 1, f"more lines than images: {rows_source} lists {n_rows}")
        tok = raw.strip()
        if tok not in (b"0", b"1"):
            shown = tok.decode(errors="replace") if tok else "an empty line"
            raise ParseError(path, i + 1, f"value {shown!r} is not 0 or 1")
        out[i] = tok == b"1"
    if len(lines) < n_rows:
        raise ParseError(
            path,
            len(lines) + 1,
            f"file ends after {len(lines)} lines but {rows_source} lists {n_rows} images "
            "(truncated file?)",
        )
    return out


# --------------------------------------------------------------------------- misc


def source_info(path: Path, root: Path) -> dict[str, Any]:
    """Provenance for meta.json: path relative to the release root and size in bytes."""
    path = Path(path)
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return {"path": rel, "bytes": path.stat().st_size}


def check_drop_choice(value: str) -> str:
    if value not in DROP_TEST_CHOICES:
        raise ValueError(f"drop_test_no_positive must be one of {DROP_TEST_CHOICES}, got {value!r}")
    return value


def no_positive_masks(labels: np.ndarray, n_seen: int) -> dict[str, np.ndarray]:
    """Boolean masks of rows with no positive among seen / unseen / all columns."""
    pos = labels == 1
    return {
        "seen": ~pos[:, :n_seen].any(axis=1),
        "unseen": ~pos[:, n_seen:].any(axis=1),
        "any": ~pos.any(axis=1),
    }


def image_present(images_dir: Path, image_id: str, placeholder: bytes | None) -> bool:
    """Is ``image_id`` on disk under ``images_dir``, as a real image (not a dead-link placeholder)?

    Accepts the nested layout (``actor/0001_x.jpg``) and the flattened one used by several
    reference repositories (``actor_0001_x.jpg``).
    """
    for cand in (images_dir / image_id, images_dir / image_id.replace("/", "_")):
        try:
            st = cand.stat()
        except OSError:
            continue
        if not cand.is_file():
            continue
        is_placeholder = (
            placeholder is not None
            and st.st_size == len(placeholder)
            and cand.read_bytes() == placeholder
        )
        return not is_placeholder
    return False


def keep_mask(
    split: str,
    image_ids: list[str],
    masks: dict[str, np.ndarray],
    meta: dict,
    *,
    images_dir: Path | None,
    candidates,
    drop_missing: bool,
    drop_test_no_positive: str,
) -> np.ndarray:
    """Which images of a split to keep: missing ones (when ``images_dir`` is given and
    ``drop_missing``; ``candidates(image_id)`` lists the relative paths to look for) and,
    for the test split, those without a positive in the named block. Counts go to meta."""
    keep = np.ones(len(image_ids), dtype=bool)
    if images_dir is not None:
        root = Path(images_dir)
        present = np.array(
            [any(image_present(root, c, None) for c in candidates(i)) for i in image_ids],
            dtype=bool,
        )
        meta.setdefault("missing_images", {"images_dir": str(images_dir), "dropped": drop_missing})
        meta["missing_images"][split] = int((~present).sum())
        if drop_missing:
            keep &= present
    if split == "test" and drop_test_no_positive != "none":
        keep &= ~masks[drop_test_no_positive]
    meta.setdefault("dropped", {})[split] = int((~keep).sum())
    return keep
