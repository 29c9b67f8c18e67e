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

``dvc.yaml`` is generated from this graph (``ovml dvc-yaml``; a test checks it is in
step), Dagster assets are built from it, and :func:`run_stages` runs it in-process,
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
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import REPO_ROOT, Params, method_code_deps, seeded, split_seed
from pipelines.io import is_main_process, read_json, write_json
from pipelines.relations import RELATIONS_CODE

STAMP = ".ovml-stage.json"
LIBRARY_CODE: tuple[str, ...] = ()  # shared helpers are not deps: editing them reruns nothing
# a backbone aligned from packaged towers (`pretrain: {recipe: lit}`)
LIT_CODE = ("pipelines/vlp/lit.py", "pipelines/vlp/towers.py", "pipelines/vlp/tower_sources.py")


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


def _rel(params: Params, kind: str, *parts: str) -> str:
    path = params.path(kind).joinpath(*parts)
    try:
        return str(path.relative_to(params.root))
    except ValueError:
        return str(path)


def download_owner(params: Params, dataset: str) -> str | None:
    """The other dataset entry whose download stage fills this entry's ``images:`` folder
    (``nus-wide-81`` reads ``data/nus-wide-images``: the same release, another label set),
    or None."""
    cfg = params.datasets[dataset]
    if cfg.download is not None or not cfg.images:
        return None
    path = Path(cfg.images)
    path = (path if path.is_absolute() else params.root / path).resolve()
    for other, ocfg in params.datasets.items():
        folder = (params.path("data") / f"{other}-images").resolve()
        if other != dataset and ocfg.download is not None and folder == path:
            return other
    return None


def _dataset_code(source: str) -> tuple[str, ...]:
    from pipelines.data import REAL_DATASETS

    module = REAL_DATASETS.get(source, source)
    extra: tuple[str, ...] = ()
    if source == "iconworld":
        extra = (
            "pipelines/data/iconworld_vocab.py",
            "pipelines/data/reference_lists/iconworld/wordnet.json",
        )
    if source == "coco":  # coco_all.py reads the instances files with coco.py's reader
        extra = ("pipelines/data/coco.py",)
    return (f"pipelines/data/{module}.py", "pipelines/data/prepared.py", *extra)


def build_graph(params: Params) -> dict[str, Stage]:
    """All stages needed by the tables of params.yaml, topologically ordered."""
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> str:
        stages.setdefault(stage.name, stage)
        return stage.name

    def dataset_stage(ds: str) -> str:
        cfg = params.datasets[ds]
        extra = (cfg.release_dir,) if cfg.release_dir else ()
        return add(
            Stage(
                "dataset",
                (ds,),
                (),
                _rel(params, "data", ds),
                (f"datasets.{ds}.source", f"datasets.{ds}.options", f"datasets.{ds}.release_dir"),
                (*LIBRARY_CODE, *_dataset_code(cfg.source)),
                extra,
            )
        )

    def backbone_stage(bb: str) -> str | None:
        cfg = params.backbones[bb]
        if cfg.weights != "pretrain":
            return None
        assert cfg.pretrain is not None
        up = dataset_stage(cfg.pretrain.dataset)
        return add(
            Stage(
                "backbone",
                (bb,),
                (up,),
                _rel(params, "models", bb),
                ("seed", f"backbones.{bb}"),
                (
                    *LIBRARY_CODE,
                    *(LIT_CODE if cfg.pretrain.recipe == "lit" else ("pipelines/vlp/pretrain.py",)),
                    "pipelines/vlp/backbone.py",
                    f"pipelines/vlp/model_configs/{cfg.model}.json",
                ),
            )
        )

    def images_stage(ds: str) -> str | None:
        if params.datasets[ds].download is None:
            other = download_owner(params, ds)  # `images:` = another entry's downloads
            return images_stage(other) if other is not None else None
        return add(
            Stage(
                "images",
                (ds,),
                (dataset_stage(ds),),
                _rel(params, "data", f"{ds}-images"),
                (f"datasets.{ds}.download",),
                ("pipelines/data/download.py",),
            )
        )

    def features_stage(ds: str, bb: str) -> str:
        ups = [dataset_stage(ds)]
        for up in (images_stage(ds), backbone_stage(bb)):
            if up is not None:
                ups.append(up)
        return add(
            Stage(
                "features",
                (ds, bb),
                tuple(ups),
                _rel(params, "features", ds, bb),
                (
                    f"backbones.{bb}.model",
                    f"backbones.{bb}.weights",
                    f"backbones.{bb}.quick_gelu",
                    f"datasets.{ds}.images",
                    f"datasets.{ds}.transform",
                    *_written(params, f"datasets.{ds}.features.patches"),
                ),
                (
                    *LIBRARY_CODE,
                    "pipelines/vlp/features.py",
                    "pipelines/vlp/backbone.py",
                    "pipelines/data/images.py",
                ),
            )
        )

    def corpus_stage(ds: str, name: str) -> str:
        released = getattr(params.corpora[name], "released", None)  # a file read, not asked
        return add(
            Stage(
                "corpus",
                (ds, name),
                (dataset_stage(ds),),
                _rel(params, "data", "corpora", ds, name),
                (f"corpora.{name}",),
                TEXT_CODE,
                (released,) if released else (),
            )
        )

    def relations_stage(ds: str, bb: str, spec) -> str:
        ups = [dataset_stage(ds)]
        if (b := backbone_stage(bb)) is not None:
            ups.append(b)
        if spec.source == "llm":
            ups.append(corpus_stage(ds, spec.corpus))
        return add(
            Stage(
                "relations",
                (ds, bb, spec.name),
                tuple(ups),
                _rel(params, "data", "relations", ds, bb, spec.name),
                (f"backbones.{bb}.model", f"backbones.{bb}.weights"),
                (*LIBRARY_CODE, *RELATIONS_CODE),
            )
        )

    for name, corpus in params.corpora.items():  # corpora asked for by name
        for ds in corpus.datasets:
            if ds not in params.datasets:
                raise ValueError(f"corpora.{name}.datasets: unknown dataset {ds!r}")
            corpus_stage(ds, name)
    for ds, cfg in params.datasets.items():  # every configured release gets its stages
        if cfg.release_dir is not None:
            dataset_stage(ds)
            images_stage(ds)
    for ds, var in params.cells:
        bb = params.backbone_for(ds, var)
        ups = [dataset_stage(ds), features_stage(ds, bb)]
        if (b := backbone_stage(bb)) is not None:
            ups.append(b)
        base, seed = split_seed(var)  # a seeded cell (qks@s1) reads its own seed, not `seed`
        method = params.variants[base].method
        ups += [corpus_stage(ds, name) for name in _cell_corpora(params, base).values()]
        if (rel := _cell_relations(params, base)) is not None:  # one graph, shared by cells
            ups.append(relations_stage(ds, bb, rel))
        add(
            Stage(
                "cell",
                (ds, var),
                tuple(ups),
                _rel(params, "results", "cells", ds, var),
                (
                    *(("seed",) if seed is None else ()),
                    f"variants.{base}",
                    f"datasets.{ds}.eval",
                    *_written(params, f"datasets.{ds}.features.mode"),
                ),
                (
                    *LIBRARY_CODE,
                    "pipelines/cells.py",
                    "pipelines/evaluate.py",
                    "pipelines/metrics.py",
                    "pipelines/methods/base.py",
                    "pipelines/vlp/prompts.py",
                    *_method_code(method),
                ),
            )
        )
    for name, tab in params.tables.items():
        ups = tuple(f"cell@{ds}@{row}" for ds, row in params.table_cells(name))
        published = (f"pipelines/published/{tab.paper.split('/')[0]}.yaml",) if tab.paper else ()
        add(
            Stage(
                "table",
                (name,),
                ups,
                _rel(params, "results", "tables", name),
                (f"tables.{name}",),
                (*LIBRARY_CODE, "pipelines/tables.py", *published),
            )
        )
    if params.tables:  # the report: every table, reproduced beside published (pipelines/report.py)
        add(
            Stage(
                "report",
                ("all",),
                tuple(f"table@{name}" for name in params.tables),
                _rel(params, "results", "report"),
                ("tables",),
                (
                    *LIBRARY_CODE,
                    "pipelines/report.py",
                    "pipelines/plan.py",
                    "pipelines/metrics.py",
                    *(f"pipelines/published/{p}.yaml" for p in _papers()),
                ),
            )
        )
    for name, agr in params.agreement.items():
        ups = tuple(f"cell@{agr.dataset}@{seeded(v, s)}" for v in agr.variants() for s in agr.seeds)
        add(
            Stage(
                "agreement",
                (name,),
                ups,
                _rel(params, "results", "agreement", name),
                (f"agreement.{name}",),
                (*LIBRARY_CODE, "pipelines/agreement.py"),
            )
        )
    return _toposort(stages)


def _papers() -> tuple[str, ...]:
    from pipelines.published import PAPERS

    return PAPERS


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


def _cell_corpora(params: Params, variant: str) -> dict[str, str]:
    from pipelines.text.config import cell_corpora

    return cell_corpora(params, variant)


def _cell_relations(params: Params, variant: str):
    from pipelines.relations import cell_relations

    return cell_relations(params, variant)


def _method_code(method: str) -> tuple[str, ...]:
    return (f"pipelines/methods/{method}.py", *method_code_deps(method))


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


def _written(params: Params, key: str) -> tuple[str, ...]:
    """``(key,)`` when the params file spells it out, else ``()``: a key added with a
    default leaves the fingerprints of files that do not use it unchanged."""
    return (key,) if params.has_key(key) else ()


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


def code_version(params: Params, graph: dict[str, Stage], name: str) -> str:
    """The stage's own inputs: the params it reads and the content of its code files
    (its upstream stages are not part of it)."""
    st = graph[name]
    h = hashlib.sha256()
    h.update(json.dumps([st.name, param_values(params, st.params)], sort_keys=True).encode())
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
    try:
        rec = read_json(params.root / graph[name].out / STAMP)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def recorded_outputs_digest(params: Params, graph: dict[str, Stage], name: str) -> str:
    """One hash of the output hashes ``name``'s record holds ("none" without a record):
    part of every downstream fingerprint, so a rebuilt upstream whose files differ makes
    its dependants stale in every view (CLI, DVC, Dagster), and one whose files came out
    byte-identical leaves them fresh."""
    return outputs_digest(read_record(params, graph, name))


def outputs_digest(record: dict[str, Any] | None) -> str:
    """One hash of the ``(relpath, sha256)`` pairs a stage record holds ("none" without
    one): byte-identical outputs give the same digest whatever their mtimes. Dagster's
    data version of the stage's asset."""
    outputs = record.get("outputs") if record else None
    if not isinstance(outputs, dict):
        return "none"
    pairs = sorted(
        (k, v.get("sha256") if isinstance(v, dict) else None) for k, v in outputs.items()
    )
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _output_files(out_dir: Path) -> list[Path]:
    """Every regular file under a stage's output (the record itself excluded)."""
    if out_dir.is_file():
        return [out_dir]
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != STAMP)


def hash_outputs(out_dir: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"size", "mtime_ns", "sha256"}}`` of every file a stage left in its folder."""
    from pipelines.io import sha256_file

    files: dict[str, dict[str, Any]] = {}
    for path in _output_files(out_dir):
        st = path.stat()
        rel = path.name if out_dir.is_file() else str(path.relative_to(out_dir))
        files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}
    return files


def check_outputs(
    out_dir: Path, outputs: dict[str, Any], *, deep: bool = False
) -> list[tuple[str, str]]:
    """Files of ``out_dir`` that differ from a record's ``outputs``: ``[(relpath, why)]``.

    Fast path: a file whose size and mtime_ns match the record is taken as unchanged; a
    file whose mtime moved (a copy, a ``touch``) is hashed, and only a different sha256
    counts. ``deep`` hashes every file whatever its mtime.
    """
    from pipelines.io import sha256_file

    bad: list[tuple[str, str]] = []
    for rel, want in outputs.items():
        path = out_dir if out_dir.is_file() else out_dir / rel
        if not path.is_file():
            bad.append((rel, "missing"))
            continue
        st = path.stat()
        if st.st_size != want.get("size"):
            bad.append((rel, f"changed (size {want.get('size')} -> {st.st_size} bytes)"))
            continue
        moved = deep or st.st_mtime_ns != want.get("mtime_ns")
        if moved and sha256_file(path) != want.get("sha256"):
            bad.append((rel, "changed (content differs from the record's sha256)"))
    return bad


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


def run_stages(
    params: Params,
    targets: Iterable[str],
    runner: Callable[[Params, Stage], Any],
    *,
    force: bool = False,
    on_event: Callable[[str, str], None] = lambda name, what: None,
    force_only: Iterable[str] = (),
    on_stale: Callable[[str, str], None] = lambda name, reason: None,
    on_dvc_lock: Callable[[Any], None] | None = None,
) -> list[str]:
    """Run targets and their upstream stages in order, skipping fresh ones. Returns ran stages.

    ``force`` reruns every stage; ``force_only`` reruns just the stages it names (their
    dependants rerun when its outputs changed, as for any stage that ran: a stage is
    checked after its upstream stages have run and recorded their outputs).
    ``on_stale(name, reason)`` says why a stage that was not forced runs.

    In a DVC workspace, every stage that ran or was reused is then committed to
    ``dvc.lock`` (also when a later stage failed), so that ``dvc repro`` finds it up to
    date (:func:`pipelines.dvc_lock.sync_dvc_lock`; ``on_dvc_lock`` gets its result)."""
    graph = build_graph(params)
    forced = set(force_only)
    ran: list[str] = []
    done: list[str] = []
    try:
        for name in upstream(graph, targets):
            if not (force or name in forced):
                fresh, reason = stage_status(params, graph, name)
                if fresh:
                    on_event(name, "fresh")
                    done.append(name)
                    continue
                on_stale(name, reason)
            on_event(name, "run")
            inputs = stage_inputs(params, graph, name)
            runner(params, graph[name])
            write_stamp(params, graph, name, inputs=inputs)
            ran.append(name)
            done.append(name)
    finally:
        _sync_dvc_lock(params, done, on_dvc_lock)
    return ran


def _sync_dvc_lock(
    params: Params, names: list[str], report: Callable[[Any], None] | None = None
) -> None:
    import logging

    from pipelines.dvc_lock import sync_dvc_lock

    result = sync_dvc_lock(params, names)
    if report is not None:
        report(result)
    elif result.warning:
        logging.getLogger(__name__).warning(result.warning)


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
