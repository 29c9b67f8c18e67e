"""The one DAG: stages derived from params.yaml, shared by the CLI, DVC and Dagster.

Stage kinds (and their output folders):

    dataset   <data>/<dataset>/                      prepared dataset (+ images for toyworld)
    images    <data>/<dataset>-images/chunk-NNNN/    downloaded shards + ledger (real datasets)
    backbone  <models>/<backbone>/                   only for backbones the pipeline pre-trains
    features  <features>/<dataset>/<backbone>/       frozen-backbone feature cache
    corpus    <data>/corpora/<dataset>/<name>/       LLM text corpus (pipelines/text), if a cell reads it
    cell      <results>/cells/<dataset>/<variant>/   metrics.json, scores.npz, model weights
    table     <results>/tables/<table>/              table.md/.csv/.json and a plot

``dvc.yaml`` is generated from this graph (``ovml dvc-yaml``; a test checks it is in
step), Dagster assets are built from it, and :func:`run_stages` runs it in-process,
skipping every stage whose fingerprint (its params, its code and its inputs'
fingerprints) matches the stamp its last run left in its output folder.
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

from pipelines.config import REPO_ROOT, Params, method_module
from pipelines.io import is_main_process, read_json, write_json

STAMP = ".ovml-stage.json"
LIBRARY_CODE: tuple[str, ...] = ()  # shared helpers are not deps: editing them reruns nothing


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


def _dataset_code(source: str) -> tuple[str, ...]:
    from pipelines.data import REAL_DATASETS

    module = REAL_DATASETS.get(source, source)
    return (f"pipelines/data/{module}.py", "pipelines/data/prepared.py")


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
                    "pipelines/vlp/pretrain.py",
                    "pipelines/vlp/backbone.py",
                    f"pipelines/vlp/model_configs/{cfg.model}.json",
                ),
            )
        )

    def images_stage(ds: str) -> str | None:
        if params.datasets[ds].download is None:
            return None
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
                (f"backbones.{bb}.model", f"backbones.{bb}.weights", f"datasets.{ds}.images"),
                (
                    *LIBRARY_CODE,
                    "pipelines/vlp/features.py",
                    "pipelines/vlp/backbone.py",
                    "pipelines/data/images.py",
                ),
            )
        )

    def corpus_stage(ds: str, name: str) -> str:
        return add(
            Stage(
                "corpus",
                (ds, name),
                (dataset_stage(ds),),
                _rel(params, "data", "corpora", ds, name),
                (f"corpora.{name}",),
                TEXT_CODE,
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
        method = params.variants[var].method
        ups += [corpus_stage(ds, name) for name in _cell_corpora(params, var).values()]
        add(
            Stage(
                "cell",
                (ds, var),
                tuple(ups),
                _rel(params, "results", "cells", ds, var),
                ("seed", f"variants.{var}", f"datasets.{ds}.eval"),
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
        ups = tuple(f"cell@{ds}@{row}" for ds in tab.datasets for row in tab.rows)
        add(
            Stage(
                "table",
                (name,),
                ups,
                _rel(params, "results", "tables", name),
                (f"tables.{name}",),
                (*LIBRARY_CODE, "pipelines/tables.py"),
            )
        )
    return _toposort(stages)


TEXT_CODE = (
    "pipelines/text/config.py",
    "pipelines/text/corpora.py",
    "pipelines/text/prompts.py",
    "pipelines/text/offline.py",
    "pipelines/text/knowledge.py",
    "pipelines/text/providers.py",
    "pipelines/text/cache.py",
)


def _cell_corpora(params: Params, variant: str) -> dict[str, str]:
    from pipelines.text.corpora import cell_corpora

    return cell_corpora(params, variant)


def _method_code(method: str) -> tuple[str, ...]:
    files = [f"pipelines/methods/{method}.py"]
    mod = method_module(method)
    files += [f for f in getattr(mod, "CODE_DEPS", ())]
    return tuple(files)


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


def fingerprint(
    params: Params, graph: dict[str, Stage], name: str, _memo: dict[str, str] | None = None
) -> str:
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    st = graph[name]
    h = hashlib.sha256()
    h.update(json.dumps([st.name, param_values(params, st.params)], sort_keys=True).encode())
    for code in st.code:
        h.update(code.encode() + _file_digest(REPO_ROOT / code).encode())
    for dep in st.deps:
        h.update(fingerprint(params, graph, dep, memo).encode())
    memo[name] = h.hexdigest()
    return memo[name]


def is_fresh(params: Params, graph: dict[str, Stage], name: str) -> bool:
    stamp = params.root / graph[name].out / STAMP
    if not stamp.exists():
        return False
    try:
        return read_json(stamp).get("fingerprint") == fingerprint(params, graph, name)
    except (OSError, ValueError):
        return False


def write_stamp(params: Params, graph: dict[str, Stage], name: str, fp: str | None = None) -> None:
    """Record that ``name``'s output was computed from ``fp`` (take it *before* running,
    so code edited while a stage runs leaves the stage stale, not falsely fresh). Only
    rank 0 writes under torchrun."""
    if not is_main_process():
        return
    write_json(
        params.root / graph[name].out / STAMP,
        {"stage": name, "fingerprint": fp or fingerprint(params, graph, name)},
    )


def run_stages(
    params: Params,
    targets: Iterable[str],
    runner: Callable[[Params, Stage], Any],
    *,
    force: bool = False,
    on_event: Callable[[str, str], None] = lambda name, what: None,
) -> list[str]:
    """Run targets and their upstream stages in order, skipping fresh ones. Returns ran stages."""
    graph = build_graph(params)
    ran: list[str] = []
    for name in upstream(graph, targets):
        upstream_ran = any(dep in ran for dep in graph[name].deps)
        if not force and not upstream_ran and is_fresh(params, graph, name):
            on_event(name, "fresh")
            continue
        on_event(name, "run")
        fp = fingerprint(params, graph, name)
        runner(params, graph[name])
        write_stamp(params, graph, name, fp)
        ran.append(name)
    return ran


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
        # a corpus keeps its response cache across reruns (DVC would delete it first)
        entry["outs"] = [{st.out: {"persist": True}}] if st.kind == "corpus" else [st.out]
        if st.kind == "images":
            summary = Path(st.out).with_name(Path(st.out).name + ".summary.json")
            entry["metrics"] = [{str(summary): {"cache": False}}]
        stages[st.dvc_name] = entry
    header = "# Generated from params.yaml by `ovml dvc-yaml`; do not edit by hand.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)
