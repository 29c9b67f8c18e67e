"""The stage spec: what every stage kind declares, and the record a run leaves.

A leaf: it imports nothing of the project, so the stage modules (pipelines/stages/*),
the workspace (pipelines/workspace.py) and the graph (pipelines/graph.py) all build on
it. A stage is ``kind@key`` (``cell@toyworld@qks``); its output folder holds the stage
record ``<out>/.ovml-stage.json`` (:data:`STAMP`, written by
:func:`pipelines.graph.write_stamp`)::

    {"stage", "fingerprint", "code_version", "inputs": {upstream: output digest},
     "outputs": {relpath: {"size", "mtime_ns", "sha256"}}, "metadata": {...},
     "finished_at": iso8601, "view": "cli" | "dvc" | "dagster", "run_id": str | null}

The code tuples below are the source files whose change reruns a stage (beside its own
module's list): a stage's fingerprint holds their content, never a shared helper's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAMP = ".ovml-stage.json"
LIBRARY_CODE: tuple[str, ...] = ()  # shared helpers are not deps: editing them reruns nothing
# a backbone aligned from packaged towers (`pretrain: {recipe: lit}`)
LIT_CODE = ("pipelines/vlp/lit.py", "pipelines/vlp/towers.py", "pipelines/vlp/tower_sources.py")
TEXT_CODE = (
    "pipelines/text/config.py",
    "pipelines/text/corpora.py",
    "pipelines/text/prompts.py",
    "pipelines/text/offline.py",
    "pipelines/text/knowledge.py",
    "pipelines/text/providers.py",
    "pipelines/text/cache.py",
    "pipelines/text/released.py",
)
RELATIONS_CODE = ("pipelines/relations.py", "pipelines/vlp/prompts.py", "pipelines/vlp/backbone.py")


@dataclass(frozen=True)
class Stage:
    kind: str
    key: tuple[str, ...]
    deps: tuple[str, ...]  # names of upstream stages
    out: str  # output folder, relative to the params root
    params: tuple[str, ...]  # dotted keys of params.yaml this stage reads
    code: tuple[str, ...]  # source files (repo-relative) whose change reruns it
    extra_deps: tuple[str, ...] = field(default=())  # other files read (e.g. a release dir)

    @property
    def name(self) -> str:
        return "@".join((self.kind, *self.key))

    @property
    def dvc_name(self) -> str:
        """DVC allows only letters, digits, '_' and '-' in stage names ('@' means foreach)."""
        return "__".join(re.sub(r"[^A-Za-z0-9_-]", "-", part) for part in (self.kind, *self.key))

    @property
    def cmd(self) -> str:
        return " ".join(["ovml", "stage", self.kind, *self.key])


Need = Callable[..., "str | None"]
"""``need(kind, *key)``: declare the upstream stage ``kind@key`` (through its kind's
module) and return its name, or None when that kind has no such stage (a backbone that
is not pre-trained here, a dataset without downloads)."""


def rel(params: Any, kind: str, *parts: str) -> str:
    """An output folder under ``params.path(kind)``, relative to the params root."""
    path = params.path(kind).joinpath(*parts)
    try:
        return str(path.relative_to(params.root))
    except ValueError:
        return str(path)


def written(params: Any, key: str) -> tuple[str, ...]:
    """``(key,)`` when the params file spells it out, else ``()``: a key added with a
    default leaves the fingerprints of files that do not use it unchanged."""
    return (key,) if params.has_key(key) else ()


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object written by a stage, or ``{}`` (absent, unreadable, not an object)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
