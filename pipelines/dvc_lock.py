"""Keep DVC's ``dvc.lock`` in step with the stage records, whichever view ran a stage.

DVC keeps its own state (``dvc.lock``) and knows nothing of stages the CLI or Dagster
ran: without help, ``dvc repro`` after ``ovml table`` would delete the fresh outputs and
compute them again (issue 26). So after a stage runs or is reused outside DVC, when the
workspace has a ``.dvc`` folder, :func:`sync_dvc_lock` runs ``dvc commit --force`` on it:
DVC itself hashes the stage's deps, params and outputs, writes its ``dvc.lock`` entry and
caches the outputs, exactly as if ``dvc repro`` had run it.

Only stages that are fresh by their record *as ``params.yaml`` sees them* are committed
(dvc.yaml reads ``params.yaml``; a run with ``--params other.yaml`` commits nothing it
computed from other values), and only while ``dvc.yaml`` is in step with ``params.yaml``.
Under ``dvc repro`` itself (``DVC_ROOT`` set) nothing is done: DVC writes its own lock.
Concurrent writers (two Dagster steps, a CLI run) are serialised by a file lock in
``.dvc/tmp``. DVC runs as its own tool (``uv tool install dvc``, see DESIGN.md), never
imported here: ``$OVML_DVC``, ``dvc`` on PATH, or uv's tool folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ConfigError, Params, load_params

COMMIT_TIMEOUT_S = 600  # hashing GBs of features takes a while; a hung dvc must not hang us


@dataclass
class LockSync:
    """What :func:`sync_dvc_lock` did: the DVC stage names committed, or why not."""

    committed: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was committed (None: nothing to say)
    warning: str | None = None  # something the user should act on


def find_dvc() -> str | None:
    """The dvc executable (an isolated uv tool), or None."""
    if exe := os.environ.get("OVML_DVC"):
        return exe if Path(exe).exists() else None
    if exe := shutil.which("dvc"):
        return exe
    candidates = [Path.home() / ".local/bin/dvc"]
    if uv := shutil.which("uv"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(
                [uv, "tool", "dir", "--bin"], capture_output=True, text=True, timeout=30
            )
            if res.returncode == 0 and res.stdout.strip():
                candidates.insert(0, Path(res.stdout.strip()) / "dvc")
    return next((str(c) for c in candidates if c.exists()), None)


def is_dvc_workspace(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def under_dvc() -> bool:
    """True inside a command that ``dvc repro`` runs (it sets DVC_ROOT / DVC_STAGE)."""
    return bool(os.environ.get("DVC_ROOT") or os.environ.get("DVC_STAGE"))


@contextlib.contextmanager
def _commit_lock(root: Path) -> Iterator[None]:
    """One committer at a time per workspace (``fcntl.flock``; released if we die)."""
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / "ovml-commit.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _committable(params: Params, names: Iterable[str]) -> tuple[list[str], str | None]:
    """The DVC names of ``names`` that are fresh by their record under the workspace's
    ``params.yaml`` (what dvc.yaml reads), or ``([], why)`` when dvc.yaml is not in step."""
    from pipelines.graph import build_graph, dvc_yaml, stage_status

    root = params.root
    try:
        dvc_params = load_params(root / "params.yaml", check_methods=False)
    except ConfigError as err:
        return [], f"params.yaml unreadable ({err})"
    dvc_file = root / "dvc.yaml"
    if not dvc_file.is_file():
        return [], "no dvc.yaml"
    if dvc_file.read_text(encoding="utf-8") != dvc_yaml(dvc_params):
        return [], "dvc.yaml is out of step with params.yaml: run `ovml dvc-yaml`"
    graph = build_graph(dvc_params)
    wanted = [n for n in dict.fromkeys(names) if n in graph]
    return [graph[n].dvc_name for n in wanted if stage_status(dvc_params, graph, n)[0]], None


def sync_dvc_lock(params: Params, names: Iterable[str]) -> LockSync:
    """``dvc commit --force`` the stages ``names`` (graph names) that are fresh by their
    record, so that ``dvc repro`` finds them up to date. A no-op outside a DVC workspace
    and under ``dvc repro``; a failure is a warning, never an error (the stage did run)."""
    root = params.root
    if under_dvc():
        return LockSync(skipped="running under dvc repro (DVC writes its own lock)")
    if not is_dvc_workspace(root):
        return LockSync(skipped="no .dvc folder")
    names = list(names)
    if not names:
        return LockSync(skipped="no stage")
    dvc = find_dvc()
    if dvc is None:
        return LockSync(
            warning="dvc.lock not updated: dvc not found (`make dvc-tool`, or set $OVML_DVC); "
            "run `ovml dvc-commit` before `dvc repro`"
        )
    with _commit_lock(root):
        targets, why = _committable(params, names)  # checked under the lock: records settle
        if why is not None:
            return LockSync(warning=f"dvc.lock not updated: {why}")
        if not targets:
            return LockSync(skipped="no fresh stage to commit")
        env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "DVC_STAGE")}
        try:
            res = subprocess.run(
                [dvc, "commit", "--force", "--quiet", *targets],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMIT_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return LockSync(warning=f"dvc.lock not updated: `dvc commit` failed ({err})")
    if res.returncode != 0:
        tail = " ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        return LockSync(
            warning=f"dvc.lock not updated: `dvc commit` exited {res.returncode}: {tail}; "
            "run `ovml dvc-commit` before `dvc repro`"
        )
    return LockSync(committed=targets)


def sync_all_fresh(params: Params) -> LockSync:
    """Commit every stage of the graph that is fresh by its record (``ovml dvc-commit``,
    what ``make dvc-repro`` runs before ``dvc repro``)."""
    from pipelines.graph import build_graph

    return sync_dvc_lock(params, build_graph(params))
