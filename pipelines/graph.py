"""The one DAG: stages derived from params.yaml, shared by the CLI, DVC and Dagster.

Stage kinds (and their output folders):

    dataset   <data>/<dataset>/                      prepared dataset (+ images for toyworld)
    images    <data>/<dataset>-images/chunk-NNNN/    downloaded shards + ledger (real datasets)
    backbone  <models>/<backbone>/                   only for backbones the pipeline pre-trains
    features  <features>/<dataset>/<backbone>/       frozen-backbone feature cache
    corpus    <data>/corpora/<dataset>/<name>/       LLM text corpus (pipelines/text), if a cell reads it
    relations <data>/relations/<dataset>/<backbone>/<graph>/  C2SRT's category graph (pipelines/relations.py)
    cell      <results>/cells/<dataset>/<variant>/   metrics.json, scores.npz, model weights
    table     <results>/tables/<table>/              table.md/.csv/.json and a plot
    agreement <results>/agreement/<name>/            method vs its paper's reference row

Each kind is declared by its own module (pipelines/stages/<kind>.py, through the one
table of pipelines/stages/kinds.py): this module only assembles the declarations,
orders them and checks freshness; it imports no stage's science. ``dvc.yaml`` is
generated from this graph (``ovml dvc-yaml``; a test checks it is in step), Dagster
assets are built from it, and :func:`pipelines.runner.run_stages` runs it in-process,
skipping every stage whose fingerprint matches the stamp its last run left in its
output folder.

Freshness is by outputs, as in DVC: a stage's fingerprint holds its own params and code
(:func:`code_version`) and the content digest of each upstream stage's recorded outputs
(:func:`recorded_outputs_digest`), never its upstream's fingerprint. A code edit that
leaves a stage's outputs byte-identical (a docstring) reruns that stage only; its
dependants stay fresh. Dagster gets the same rule from data versions (the output
digest) and code versions (:func:`code_version`), dagster_project/records.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import REPO_ROOT, Params
from pipelines.io import is_main_process, write_json
from pipelines.stages.kinds import KINDS, stage_kind
from pipelines.stages.spec import (  # noqa: F401 (re-exported: the graph's names)
    LIBRARY_CODE,
    LIT_CODE,
    STAMP,
    TEXT_CODE,
    Stage,
)
from pipelines.workspace import (  # noqa: F401 (re-exported)
    check_outputs,
    download_owner,
    hash_outputs,
    outputs_digest,
    read_stage_record,
)


def build_graph(params: Params) -> dict[str, Stage]:
    """All stages needed by the tables of params.yaml, topologically ordered.

    Each kind's module (pipelines/stages/kinds.py) asks for the stages params wants and
    declares each one, with its upstream stages through ``need``; this function only
    collects them (the first declaration of a name wins) and orders them."""
    stages: dict[str, Stage] = {}

    def need(kind: str, *key: str) -> str | None:
        stage = stage_kind(kind).declare(params, key, need)
        if stage is None:
            return None
        stages.setdefault(stage.name, stage)
        return stage.name

    for module in KINDS.values():
        module.request(params, need)
    return _toposort(stages)


def _toposort(stages: dict[str, Stage]) -> dict[str, Stage]:
    order: dict[str, Stage] = {}

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in stages[name].deps:
            visit(dep)
        order[name] = stages[name]

    for name in stages:
        visit(name)
    return order


def upstream(graph: dict[str, Stage], targets: Iterable[str]) -> list[str]:
    """Targets and everything they depend on, in run order."""
    need: set[str] = set()

    def visit(name: str) -> None:
        if name in need:
            return
        if name not in graph:
            raise KeyError(f"no stage {name!r} in the graph (known: {', '.join(graph)})")
        need.add(name)
        for dep in graph[name].deps:
            visit(dep)

    for t in targets:
        visit(t)
    return [n for n in graph if n in need]


# ------------------------------------------------------------------------ fingerprints
def param_values(params: Params, keys: Iterable[str]) -> dict[str, Any]:
    raw = params.model_dump(mode="json", exclude={"root", "raw"})
    out = {}
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def code_version(
    params: Params, graph: dict[str, Stage], name: str, *, label: str | None = None
) -> str:
    """The stage's own inputs: the params it reads and the content of its code files
    (its upstream stages are not part of it). ``label`` stands in for the stage's name:
    the seeds of one cell variant, which differ only in their names, then hash alike
    (the code version of their Dagster asset: dagster_project/records.py)."""
    st = graph[name]
    h = hashlib.sha256()
    h.update(
        json.dumps([label or st.name, param_values(params, st.params)], sort_keys=True).encode()
    )
    for code in st.code:
        h.update(code.encode() + _file_digest(REPO_ROOT / code).encode())
    for extra in st.extra_deps:  # files read besides code (a released corpus); not folders
        path = Path(extra) if Path(extra).is_absolute() else params.root / extra
        if path.is_file():
            h.update(extra.encode() + _file_digest(path).encode())
    return h.hexdigest()


def stage_inputs(params: Params, graph: dict[str, Stage], name: str) -> dict[str, Any]:
    """What a stage's fingerprint is made of: ``{"code_version": ..., "inputs": {upstream
    stage: digest of its recorded outputs}}`` (take it before the stage runs)."""
    return {
        "code_version": code_version(params, graph, name),
        "inputs": {dep: recorded_outputs_digest(params, graph, dep) for dep in graph[name].deps},
    }


def _inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def fingerprint(params: Params, graph: dict[str, Stage], name: str) -> str:
    """One hash of :func:`stage_inputs`: own params and code, and upstream output digests."""
    return _inputs_hash(stage_inputs(params, graph, name))


def read_record(params: Params, graph: dict[str, Stage], name: str) -> dict[str, Any] | None:
    """The stage record ``<out>/.ovml-stage.json`` of ``name`` (None if absent or unreadable)."""
    return read_stage_record(params.root, graph[name].out)


def recorded_outputs_digest(params: Params, graph: dict[str, Stage], name: str) -> str:
    """One hash of the output hashes ``name``'s record holds ("none" without a record):
    part of every downstream fingerprint, so a rebuilt upstream whose files differ makes
    its dependants stale in every view (CLI, DVC, Dagster), and one whose files came out
    byte-identical leaves them fresh."""
    return outputs_digest(read_record(params, graph, name))


def stage_status(
    params: Params, graph: dict[str, Stage], name: str, *, deep: bool = False
) -> tuple[bool, str]:
    """``(fresh, reason)``: fresh when the record's fingerprint matches the inputs (params,
    code, upstream records) and every recorded output is on disk unchanged."""
    st = graph[name]
    out_dir = params.root / st.out
    rec = read_record(params, graph, name)
    if rec is None:
        if (out_dir / STAMP).exists():
            return False, f"record {st.out}/{STAMP} is unreadable"
        return False, "never run (no stage record)"
    if rec.get("fingerprint") != fingerprint(params, graph, name):
        return False, _why_inputs_changed(rec, stage_inputs(params, graph, name))
    outputs = rec.get("outputs")
    if not isinstance(outputs, dict):
        return False, "record has no output hashes (written by an older ovml)"
    bad = check_outputs(out_dir, outputs, deep=deep)
    if bad:
        rel, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return False, f"output {st.out}/{rel} {why}{more}"
    return True, "up to date"


def _why_inputs_changed(rec: dict[str, Any], now: dict[str, Any]) -> str:
    if "code_version" not in rec or not isinstance(rec.get("inputs"), dict):
        return "inputs changed (params, code or an upstream stage's outputs)"
    if rec["code_version"] != now["code_version"]:
        return "params or code changed"
    for dep, digest in now["inputs"].items():
        if rec["inputs"].get(dep) != digest:
            return f"outputs of upstream {dep} changed"
    if set(rec["inputs"]) != set(now["inputs"]):
        return "its upstream stages changed"
    return "inputs changed since its record was written"


def is_fresh(params: Params, graph: dict[str, Stage], name: str) -> bool:
    return stage_status(params, graph, name)[0]


def rebuild_hint(stage: Stage) -> str:
    """How to rebuild a stage's outputs, for error messages."""
    return f"stage {stage.name}; rebuild with `{stage.cmd}` (or `ovml run`/`ovml table`)"


class StaleInputError(FileNotFoundError):
    """An upstream output is missing or differs from its stage record."""


def check_inputs(params: Params, graph: dict[str, Stage], name: str) -> None:
    """Raise :class:`StaleInputError` naming the file and the stage that rebuilds it when an
    output of one of ``name``'s upstream stages is missing or changed since it was recorded."""
    for dep in graph[name].deps:
        st = graph[dep]
        rec = read_record(params, graph, dep)
        outputs = rec.get("outputs") if rec else None
        out_dir = params.root / st.out
        if rec is None:
            if not out_dir.exists():
                raise StaleInputError(f"{out_dir}: missing; it is the output of {rebuild_hint(st)}")
            continue
        if not isinstance(outputs, dict):
            continue
        bad = check_outputs(out_dir, outputs)
        if bad:
            rel, why = bad[0]
            raise StaleInputError(f"{out_dir / rel}: {why}; it is an output of {rebuild_hint(st)}")


def write_stamp(
    params: Params,
    graph: dict[str, Stage],
    name: str,
    fp: str | None = None,
    *,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    view: str | None = None,
    run_id: str | None = None,
) -> None:
    """Record that ``name``'s output was computed from ``inputs`` (:func:`stage_inputs`;
    take it *before* running, so code edited while a stage runs leaves the stage stale,
    not falsely fresh; ``fp``, a :func:`fingerprint` taken before, is the older way to
    say the same and wins over ``inputs``). Only rank 0 writes under torchrun.

    The stamp is the stage record (pipelines/records.py): besides the fingerprint, its
    ``code_version`` and the upstream output digests it was made of (``inputs``), it
    holds the size, mtime and sha256 of every file in the output folder (``outputs``),
    the output's ``metadata`` (default: :func:`pipelines.records.stage_metadata`),
    ``finished_at``, which ``view`` ran it (default: cli, or dvc under ``dvc repro``)
    and the Dagster ``run_id`` when Dagster ran it."""
    from pipelines.records import current_run_id, current_view, now_iso, stage_metadata

    if not is_main_process():
        return
    st = graph[name]
    out_dir = params.root / st.out
    inputs = inputs or stage_inputs(params, graph, name)
    write_json(
        out_dir / STAMP,
        {
            "stage": name,
            "fingerprint": fp or _inputs_hash(inputs),
            "code_version": inputs["code_version"],
            "inputs": inputs["inputs"],
            "outputs": hash_outputs(out_dir) if outputs is None else outputs,
            "metadata": stage_metadata(params.root, st.kind, st.out)
            if metadata is None
            else metadata,
            "finished_at": now_iso(),
            "view": view or current_view(),
            "run_id": run_id or current_run_id(),
        },
    )


# -------------------------------------------------------------------------------- dvc
def dvc_yaml(params: Params, params_file: str = "params.yaml") -> str:
    """The dvc.yaml text for this graph (one stage per graph stage)."""
    graph = build_graph(params)
    stages = {}
    for st in graph.values():
        deps = [*st.code, *(graph[d].out for d in st.deps), *st.extra_deps]
        entry: dict[str, Any] = {"cmd": st.cmd, "deps": deps}
        keys = [k for k in st.params if params.has_key(k)]
        entry["params"] = keys if params_file == "params.yaml" else [{params_file: keys}]
        # `persist`: DVC never deletes an output before the command (issue 26). A plain
        # `dvc repro` on a workspace the CLI or Dagster built (no dvc.lock entry yet) runs
        # `ovml stage`, which verifies the outputs against the stage record and returns at
        # once when they are fresh (DVC then records them); a stale or corrupted output is
        # recomputed in place, as the CLI does. A corpus keeps its response cache this way.
        entry["outs"] = [{st.out: {"persist": True}}]
        if st.kind == "images":
            summary = Path(st.out).with_name(Path(st.out).name + ".summary.json")
            entry["metrics"] = [{str(summary): {"cache": False}}]
        stages[st.dvc_name] = entry
    header = "# Generated from params.yaml by `ovml dvc-yaml`; do not edit by hand.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)
