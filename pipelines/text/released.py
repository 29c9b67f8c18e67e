"""A released class-descriptions corpus (RCNn's ``redefine_classname/<dataset>_post_llm.json``),
read into the ``class-descriptions`` schema (pipelines/text/__init__.py).

Format (the reference's ``datasets/caption.py`` reads it)::

    {"<index>": {"node_name": "person", "candidate_sentences": ["a student, which is a person.", ...]},
     ...}

``<index>`` is the class's column in the reference's label order (seen, then unseen);
``node_name`` is its name, with ``_`` for spaces. A class is matched to the dataset's label
space by its name (case-insensitive, ``_`` read as a space, as the reference does), which
carries the meaning; the index only settles a name that several labels share (Open Images
repeats display names), and an index that differs from our column is counted
(``index_differs``) and warned about. Anything else is an error naming the file and line:
not JSON, a key that is not an index, a repeated key, an entry without ``node_name`` or
``candidate_sentences`` (or with other keys), a sentence that is not a non-empty string,
a name that is no label of the dataset, two entries for one label.

Each sentence's ``type`` is read from its shape, as the reference's generator writes them
(a best-effort reading; RCNn trains on the text alone)::

    scene       "a X, which appears together with the S ..."
    chain       "a C, which is a X, which is a P."            item "C > P"
    subclass    "a C, which is a X."                          item "C"
    superclass  "a X, which is a P."                          item "P"
    attribute   "a X, which has ..." / "a X, which is <no article> ..."   item: the clause
    other       any other shape                               item: the sentence
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WS = re.compile(r"\s*")
_ARTICLE = re.compile(r"^(?:an?|the)\s+", re.I)
_IS_A = re.compile(r"^is\s+(?:an?\s+)(.+)$", re.I)
ENTRY_KEYS = {"node_name", "candidate_sentences"}


class ReleasedCorpusError(ValueError):
    """A released corpus file that does not have the reference's format."""


@dataclass
class ReleasedCorpus:
    rows: list[dict[str, Any]]  # the class-descriptions schema, one row per sentence
    described: set[int] = field(default_factory=set)  # label columns with an entry
    entries: int = 0
    index_differs: int = 0
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""


class _Lines:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]

    def error(self, offset: int, what: str) -> ReleasedCorpusError:
        line = bisect.bisect_right(self.newlines, offset - 1) + 1
        return ReleasedCorpusError(
            f"{self.path}:{line}: {what} (expected RCNn's released format: "
            '{"<index>": {"node_name": str, "candidate_sentences": [str, ...]}})'
        )


def _members(text: str, pos: int, lines: _Lines, what: str, opener: str):
    """The members of the JSON object ('{') or array ('[') at ``pos``: [(key | None,
    value, offset)], keys in file order (repeats kept, for the caller to refuse)."""
    dec = json.JSONDecoder()
    closer = "}" if opener == "{" else "]"
    pos = _WS.match(text, pos).end()
    if text[pos : pos + 1] != opener:
        raise lines.error(pos, f"{what} must be a JSON {'object' if opener == '{' else 'list'}")
    pos = _WS.match(text, pos + 1).end()
    out: list[tuple[str | None, Any, int]] = []
    if text[pos : pos + 1] == closer:
        return out
    while True:
        key = None
        if opener == "{":
            key, pos = dec.raw_decode(text, pos)
            pos = _WS.match(text, pos).end()
            pos = _WS.match(text, pos + 1).end()  # the ':' (json.loads checked the syntax)
        start = pos
        value, pos = dec.raw_decode(text, pos)
        out.append((key, value, start))
        pos = _WS.match(text, pos).end()
        if text[pos] == closer:
            return out
        pos = _WS.match(text, pos + 1).end()  # ','


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def sentence_type(sentence: str, name: str) -> tuple[str, str]:
    """(type, item) of one released sentence about class ``name`` (see the module doc)."""
    s = sentence.strip()
    n = _norm(name)
    marker = ", which appears together with the "
    if marker in s.lower():
        at = s.lower().index(marker) + len(marker)
        return "scene", s[at:].strip().rstrip(".").strip()
    parts = [p.strip() for p in s.rstrip(".").split(", which ")]
    subject = _norm(_ARTICLE.sub("", parts[0]))
    if len(parts) == 3:
        mid, last = (
            _IS_A.match(parts[1]),
            _IS_A.match(parts[2]) or re.match(r"^is\s+(.+)$", parts[2], re.I),
        )
        if mid and last and _norm(mid.group(1)) == n and subject != n:
            return "chain", f"{_ARTICLE.sub('', parts[0])} > {last.group(1).strip()}"
    if len(parts) == 2:
        is_a = _IS_A.match(parts[1])
        if subject != n and is_a and _norm(is_a.group(1)) == n:
            return "subclass", _ARTICLE.sub("", parts[0])
        if subject == n and is_a:
            return "superclass", is_a.group(1).strip()
    if subject == n and len(parts) > 1:
        return "attribute", ", which ".join(parts[1:])
    return "other", s


def read_released(path: Path, names: list[str]) -> ReleasedCorpus:
    """Read and validate a released corpus against the label space ``names`` (seen then
    unseen, our column order)."""
    path = Path(path)
    if not path.is_file():
        raise ReleasedCorpusError(
            f"{path}: no such file; point `released:` (relative to the params file) at the "
            "released corpus, e.g. RCNn's redefine_classname/mscoco_post_llm.json"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReleasedCorpusError(f"{path}: not UTF-8 text ({err})") from None
    lines = _Lines(path, text)
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise ReleasedCorpusError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    by_name: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        by_name.setdefault(_norm(n), []).append(j)
    out = ReleasedCorpus([], sha256=hashlib.sha256(raw).hexdigest())
    seen_keys: set[str] = set()
    owner: dict[int, str] = {}
    for key, _entry, at in _members(text, 0, lines, "the file", "{"):
        assert key is not None
        if not re.fullmatch(r"\d+", key):
            raise lines.error(at, f"key {key!r} is not a class index")
        if key in seen_keys:
            raise lines.error(at, f"key {key!r} appears twice")
        seen_keys.add(key)
        fields = {k: (v, o) for k, v, o in _members(text, at, lines, f"entry {key!r}", "{")}
        missing, unknown = ENTRY_KEYS - set(fields), set(fields) - ENTRY_KEYS
        if missing or unknown:
            raise lines.error(
                at,
                f"entry {key!r}: "
                + "; ".join(
                    [f"missing {sorted(missing)}"] * bool(missing)
                    + [f"unknown keys {sorted(unknown)}"] * bool(unknown)
                ),
            )
        node, node_at = fields["node_name"]
        if not isinstance(node, str) or not node.strip():
            raise lines.error(node_at, f"entry {key!r}: node_name must be a non-empty string")
        cands = by_name.get(_norm(node), [])
        if not cands:
            raise lines.error(
                node_at,
                f"entry {key!r}: node_name {node!r} is no label of this dataset "
                f"({len(names)} labels, e.g. {names[:5]}); is it the corpus of another "
                "label set?",
            )
        index = int(key)
        if len(cands) > 1 and index not in cands:
            raise lines.error(
                node_at,
                f"entry {key!r}: {node!r} names {len(cands)} labels (columns {cands[:5]}) "
                "and its index is none of them",
            )
        j = index if index in cands else cands[0]
        if j in owner:
            raise lines.error(
                node_at,
                f"entry {key!r}: label {names[j]!r} already described by entry {owner[j]!r}",
            )
        owner[j] = key
        out.index_differs += j != index
        sents, sents_at = fields["candidate_sentences"]
        if not isinstance(sents, list):
            raise lines.error(sents_at, f"entry {key!r}: candidate_sentences must be a list")
        members = _members(text, sents_at, lines, f"entry {key!r}: candidate_sentences", "[")
        for _, sentence, s_at in members:
            if not isinstance(sentence, str) or not sentence.strip():
                raise lines.error(
                    s_at, f"entry {key!r}: a candidate sentence must be a non-empty string"
                )
            kind, item = sentence_type(sentence, node)
            out.rows.append(
                {
                    "label": names[j],
                    "label_id": j,
                    "type": kind,
                    "item": item,
                    "text": sentence.strip(),
                }
            )
        if members:
            out.described.add(j)
        else:
            out.warnings.append(f"entry {key!r} ({node}) has no sentence")
        out.entries += 1
    if out.index_differs:
        out.warnings.append(
            f"{out.index_differs} entr(ies) sit at another index than their label's column; "
            "matched by name"
        )
    return out
