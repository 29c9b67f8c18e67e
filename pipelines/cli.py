"""ovml: the command line. Every command reads params.yaml (or --params FILE).

ovml demo                   the main job: the demo tables (iconworld) and agreement, printed
ovml run DATASET VARIANT    one cell (and whatever it needs)
ovml table NAME             one table (and its cells)
ovml agreement [NAME]       each method vs its paper's reference row, over seeds
ovml ui                     Dagster + MLflow UIs on localhost
ovml list                   datasets, variants, tables and which stages are fresh (or why not)
ovml verify                 check every stage's outputs on disk against its record
ovml dvc-yaml [--check]     write (or check) dvc.yaml from params.yaml
ovml dvc-commit             record every fresh stage in dvc.lock (before `dvc repro`)
ovml stage KIND KEY...      run exactly one stage (what dvc.yaml calls)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.config import DEFAULT_PARAMS, ConfigError, Params, load_params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
out = Console()


def _add_data_commands() -> None:
    from pipelines.cli_data import data_app

    app.add_typer(data_app, name="data")


_add_data_commands()


@app.callback()
def _redact_everything() -> None:
    from pipelines.redact import install

    install()  # no credential in any log line or uncaught traceback of a command


ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file", exists=False)]


def _params(path: Path) -> Params:
    try:
        return load_params(path)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None


def _run(
    params: Params,
    targets: list[str],
    force: bool = False,
    *,
    force_only: tuple[str, ...] = (),
) -> list[str]:
    """Run targets (and what they need). ``force`` reruns everything from scratch;
    ``force_only`` reruns just those stages, from scratch (no checkpoint resumed)."""
    from pipelines.graph import build_graph, upstream
    from pipelines.redact import redact
    from pipelines.runner import run_stage, run_stages

    from_scratch = set(force_only)
    if force:
        from_scratch |= set(upstream(build_graph(params), targets))

    def event(name: str, what: str) -> None:
        if what == "fresh":
            console.print(f"[dim]✓ {name} (up to date)[/dim]")
        else:
            console.print(f"[bold cyan]▶ {name}[/bold cyan]")

    def stale(name: str, reason: str) -> None:
        console.print(f"[dim]  {name} is stale: {reason}[/dim]", highlight=False)

    def dvc_lock(result) -> None:
        _print_dvc_lock(result)

    t0 = time.time()
    try:
        ran = run_stages(
            params,
            targets,
            lambda p, st: run_stage(p, st, from_scratch=st.name in from_scratch),
            force=force,
            force_only=force_only,
            on_event=event,
            on_stale=stale,
            on_dvc_lock=dvc_lock,
        )
    except (ConfigError, OSError, ValueError, KeyError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {redact(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]done[/green] in {time.time() - t0:.1f}s: {len(ran)} stage(s) ran")
    return ran


def _print_dvc_lock(result) -> None:
    """One line on what :func:`pipelines.dvc_lock.sync_dvc_lock` did (nothing outside DVC)."""
    if result.warning:
        console.print(f"[yellow]warning:[/yellow] {result.warning}", highlight=False)
    elif result.committed:
        console.print(f"[dim]dvc.lock: committed {len(result.committed)} stage(s)[/dim]")


def _print_table(params: Params, name: str) -> None:
    from pipelines.tables import fmt_cell, table_rows

    columns, rows, missing = table_rows(params, name)
    tab = Table(title=params.tables[name].title, title_justify="left")
    if params.tables[name].seeds is not None:
        tab.caption = f"mean ± std over seeds {params.tables[name].seeds}"
    if params.tables[name].published_dataset:
        tab.caption = (tab.caption or "") + (
            f"; (dim): the paper's {params.tables[name].published_dataset} numbers, "
            "a reference, not a target"
        )
    for col in ("Method", "Task", *columns):
        tab.add_column(col, justify="right" if col in columns else "left")
    for r in rows:
        vals = []
        for m in columns:
            p = r.get(f"{m} (paper)")
            s = fmt_cell(r, m)
            vals.append(s + (f" [dim]({p:.1f})[/dim]" if p is not None else ""))
        prefix = (
            r["variant"]
            if len(params.tables[name].datasets) == 1
            else f"{r['dataset']}/{r['variant']}"
        )
        tab.add_row(prefix, r["task"], *vals)
    out.print(tab)
    folder = params.path("results") / "tables" / name
    out.print(f"[dim]files: {folder}/table.md, table.csv, mAP.png[/dim]")
    if missing:
        out.print(f"[yellow]missing cells:[/yellow] {', '.join(missing)}")


@app.command()
def demo(
    params: ParamsOpt = DEFAULT_PARAMS,
    force: Annotated[bool, typer.Option(help="recompute even fresh stages")] = False,
) -> None:
    """The main job: build the embedded dataset (iconworld), pre-train its tiny CLIP, run and
    print the demo tables (``demo_tables``) and agreement sets (``demo_agreement``)."""
    p = _params(params)
    if not p.demo_tables:
        console.print("[red]error:[/red] params has no demo_tables")
        raise typer.Exit(2)
    targets = [f"table@{t}" for t in p.demo_tables]
    targets += [f"agreement@{a}" for a in p.demo_agreement]
    _run(p, targets, force=force)
    for t in p.demo_tables:
        _print_table(p, t)
    for a in p.demo_agreement:
        _print_agreement(p, a)
    _print_other_agreements(p)


def _print_other_agreements(params: Params) -> None:
    """One line per agreement set the demo did not run: how to get it, and what it costs."""
    from pipelines.config import seeded

    for name, cfg in params.agreement.items():
        if name in params.demo_agreement:
            continue
        cells = {seeded(v, s) for v in cfg.variants() for s in cfg.seeds}
        demo_datasets = {params.agreement[a].dataset for a in params.demo_agreement}
        reuse = (
            "the demo reuses the ones it has"
            if cfg.dataset in demo_datasets
            else "none run by the demo"
        )
        out.print(
            f"[dim]more: `ovml agreement {name}` compares {', '.join(cfg.pairs)} on "
            f"{cfg.dataset} ({len(cells)} cells over seeds {cfg.seeds}; {reuse})[/dim]"
        )


def _print_agreement(params: Params, name: str) -> None:
    from pipelines.agreement import agreement_rows

    rows, summary = agreement_rows(params, name)
    cfg = params.agreement[name]
    tab = Table(
        title=f"{cfg.title} (beyond {cfg.sigmas:g} std over seeds {cfg.seeds})",
        title_justify="left",
        caption=f"paper numbers: {cfg.published_dataset}, for the direction only",
    )
    for col in ("Pair", "Task", "Metric", "Paper", "Here: method", "reference", "diff", "agrees"):
        tab.add_column(col)

    def pm(r: dict, k: str) -> str:
        v = r.get(f"measured_{k}")
        return "—" if v is None else f"{v:.1f} ± {r[f'measured_{k}_std']:.1f}"

    for r in rows:
        tab.add_row(
            r["pair"],
            r["task"],
            r["metric"],
            f"{r['published_method']:.1f} vs {r['published_reference']:.1f}",
            pm(r, "method"),
            pm(r, "reference"),
            pm(r, "diff"),
            "[green]yes[/green]" if r["agrees"] else "[red]no[/red]",
        )
    out.print(tab)
    for s in summary:
        out.print(
            f"[bold]{s['pair']}[/bold] vs {s['reference']} ({s['source']}): "
            f"{s['agree']}/{s['of']} agree"
            + ("" if s["complete"] else " [yellow](cells missing)[/yellow]")
        )
    out.print(f"[dim]files: {params.path('results') / 'agreement' / name}/agreement.md[/dim]")


@app.command()
def agreement(
    name: Annotated[str | None, typer.Argument(help="agreement set (default: all)")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Each method against its paper's reference row: sign beyond 2 std over seeds, k/N."""
    p = _params(params)
    names = [name] if name else list(p.agreement)
    unknown = [n for n in names if n not in p.agreement]
    if unknown or not names:
        console.print(f"[red]error:[/red] unknown agreement {unknown} (known: {list(p.agreement)})")
        raise typer.Exit(2)
    _run(p, [f"agreement@{n}" for n in names])
    for n in names:
        _print_agreement(p, n)


@app.command()
def run(
    dataset: str,
    variant: str,
    params: ParamsOpt = DEFAULT_PARAMS,
    force: Annotated[
        bool, typer.Option(help="recompute the cell from scratch (no checkpoint resumed)")
    ] = False,
    force_upstream: Annotated[
        bool, typer.Option(help="recompute the cell and everything it needs, from scratch")
    ] = False,
) -> None:
    """Compute one cell (DATASET, VARIANT) and whatever it needs; print its metrics."""
    from pipelines.config import split_seed

    p = _params(params)
    base = split_seed(variant)[0]  # `qks@s1`: seed 1 of variant qks
    for what, name, known in (("dataset", dataset, p.datasets), ("variant", base, p.variants)):
        if name not in known:
            console.print(f"[red]error:[/red] unknown {what} {name!r} (known: {', '.join(known)})")
            raise typer.Exit(2)
    name = f"cell@{dataset}@{variant}"
    if (dataset, variant) not in p.cells:
        console.print(
            f"[yellow]note:[/yellow] ({dataset}, {variant}) is in no table; running it anyway"
        )
        _run_extra_cell(p, dataset, variant, force, force_upstream)
    else:
        _run(p, [name], force=force_upstream, force_only=(name,) if force else ())
    from pipelines.cells import load_cell_metrics

    metrics = load_cell_metrics(p, dataset, variant) or {}
    tab = Table(title=f"{dataset} / {variant}")
    keys = [k for k in metrics.get("gzsl", {})]
    tab.add_column("Task")
    for k in keys:
        tab.add_column(k, justify="right")
    for task in ("zsl", "gzsl"):
        if task in metrics:
            tab.add_row(task.upper(), *[f"{metrics[task].get(k, float('nan')):.1f}" for k in keys])
    out.print(tab)


def _run_extra_cell(
    p: Params, dataset: str, variant: str, force: bool, force_upstream: bool = False
) -> None:
    from pipelines.config import TableConfig, split_seed

    base, seed = split_seed(variant)
    adhoc = TableConfig(
        title="ad hoc",
        datasets=[dataset],
        rows=[base],
        seeds=None if seed is None else [seed],
    )
    extra = p.model_copy(update={"tables": {**p.tables, "_adhoc": adhoc}})
    name = f"cell@{dataset}@{variant}"
    _run(extra, [name], force=force_upstream, force_only=(name,) if force else ())


@app.command()
def table(
    name: str,
    params: ParamsOpt = DEFAULT_PARAMS,
    force: Annotated[bool, typer.Option(help="re-render the table even if fresh")] = False,
    force_upstream: Annotated[
        bool, typer.Option(help="recompute the table and everything upstream, from scratch")
    ] = False,
) -> None:
    """Compute a table (and its cells) and print it."""
    p = _params(params)
    if name not in p.tables:
        console.print(f"[red]error:[/red] unknown table {name!r} (known: {', '.join(p.tables)})")
        raise typer.Exit(2)
    target = f"table@{name}"
    _run(p, [target], force=force_upstream, force_only=(target,) if force else ())
    _print_table(p, name)


@app.command("list")
def list_(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Datasets, variants, tables, and whether each stage is up to date (and if not, why).
    What the demo builds comes first; stages never run are their own state."""
    from pipelines.graph import STAMP, build_graph, stage_status, upstream

    p = _params(params)
    graph = build_graph(p)
    demo = set(upstream(graph, _demo_targets(p)))
    states: dict[str, tuple[str, str]] = {}
    for name, st in graph.items():
        fresh, reason = stage_status(p, graph, name)
        never = not fresh and not (p.root / st.out / STAMP).exists()
        states[name] = ("fresh" if fresh else "never run" if never else "stale", reason)
    order = sorted(  # the demo's stages first, then what has run, then the rest; in run order
        graph, key=lambda n: (n not in demo, states[n][0] == "never run")
    )
    styles = {"fresh": "green", "stale": "yellow", "never run": "dim"}
    tab = Table(title="stages")
    tab.add_column("stage")
    tab.add_column("state")
    tab.add_column("output")
    for name in order:
        state = states[name][0]
        tab.add_row(name, f"[{styles[state]}]{state}[/{styles[state]}]", graph[name].out)
    out.print(tab)
    for name in order:  # one line each: a table column would truncate the reason
        if states[name][0] == "stale":
            out.print(
                f"[yellow]stale[/yellow] {name}: {states[name][1]}", highlight=False, soft_wrap=True
            )
    counts = {k: sum(s == k for s, _ in states.values()) for k in styles}
    out.print(", ".join(f"{n} {k}" for k, n in counts.items() if n), highlight=False)
    out.print("variants: " + ", ".join(f"{v} ({c.method})" for v, c in p.variants.items()))


def _demo_targets(p: Params) -> list[str]:
    """What ``ovml demo`` computes: its tables and agreement sets."""
    return [
        *(f"table@{t}" for t in p.demo_tables),
        *(f"agreement@{a}" for a in p.demo_agreement),
    ]


@app.command()
def stage(
    kind: str,
    key: list[str],
    params: ParamsOpt = DEFAULT_PARAMS,
    dagster_run_id: Annotated[
        str | None, typer.Option(hidden=True, help="the Dagster run that launched this stage")
    ] = None,
    dagster_run_url: Annotated[str | None, typer.Option(hidden=True)] = None,
    rerun: Annotated[
        bool,
        typer.Option(
            "--rerun",
            help="run even when the stage is fresh by its record (Dagster passes it: it "
            "has decided to run the stage already)",
        ),
    ] = False,
) -> None:
    """Run exactly one stage, without its upstream (dvc.yaml's commands).

    A stage that is fresh by its record (fingerprint, and every output's sha256 checked
    against the record) is left as it is and the command returns at once: a plain `dvc
    repro` on a workspace the CLI or Dagster built then records it in dvc.lock instead of
    recomputing it (issue 26). A stale or corrupted output is recomputed."""
    import contextlib
    import json

    from pipelines.capacity import CapacityError
    from pipelines.graph import (
        StaleInputError,
        build_graph,
        check_inputs,
        stage_inputs,
        stage_status,
        write_stamp,
    )
    from pipelines.records import stage_view
    from pipelines.redact import redact
    from pipelines.runner import run_stage
    from pipelines.tracking import dagster_run

    # Dagster passes what its resources override (device, threads, tracking) here
    overrides = json.loads(os.environ.get("OVML_STAGE_OVERRIDES") or "{}")
    try:
        if kind == "cell" and len(key) == 2:
            # its own variant only: checking every variant imports every method module
            p = load_params(params, overrides or None, check_methods=False)
            p.check_cell(*key)
        else:
            p = load_params(params, overrides or None)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None
    graph = build_graph(p)
    name = "@".join([kind, *key])
    if name not in graph:
        console.print(f"[red]error:[/red] no stage {name!r} (see `ovml list`)")
        raise typer.Exit(2)
    try:
        check_inputs(p, graph, name)
    except StaleInputError as err:
        console.print(
            f"[red]error:[/red] {name}: {redact(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    if not rerun:
        fresh, reason = stage_status(p, graph, name, deep=True)  # every output hashed
        if fresh:
            console.print(f"{name} is up to date (outputs match its record); nothing to run")
            if not dagster_run_id:
                from pipelines.dvc_lock import sync_dvc_lock

                _print_dvc_lock(sync_dvc_lock(p, [name]))
            return
        console.print(f"{name} is stale: {reason}", highlight=False, soft_wrap=True)
    inputs = stage_inputs(p, graph, name)  # taken before the run
    with contextlib.ExitStack() as stack:
        if dagster_run_id:
            stack.enter_context(dagster_run(dagster_run_id, dagster_run_url))
            stack.enter_context(stage_view("dagster", dagster_run_id))
        try:
            run_stage(p, graph[name])
        except CapacityError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        write_stamp(p, graph, name, inputs=inputs)
    if not dagster_run_id:  # Dagster commits after its step; dvc repro writes its own lock
        from pipelines.dvc_lock import sync_dvc_lock

        _print_dvc_lock(sync_dvc_lock(p, [name]))


@app.command("dvc-commit")
def dvc_commit(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Bring dvc.lock in step with the stage records: `dvc commit` every stage that is
    fresh by its record, so `dvc repro` reruns only what is stale (and deletes nothing
    fresh). `make dvc-repro` runs it first."""
    from pipelines.dvc_lock import sync_all_fresh

    p = _params(params)
    result = sync_all_fresh(p)
    if result.warning:
        console.print(f"[red]error:[/red] {result.warning}", highlight=False)
        raise typer.Exit(1)
    if result.skipped:
        console.print(f"nothing committed: {result.skipped}")
        return
    console.print(f"dvc.lock: committed {len(result.committed)} fresh stage(s)")


@app.command()
def verify(
    params: ParamsOpt = DEFAULT_PARAMS,
    fast: Annotated[
        bool, typer.Option(help="trust files whose size and mtime match (no hashing)")
    ] = False,
) -> None:
    """Check every stage's outputs on disk against its record (sha256); exit 1 on a mismatch."""
    from pipelines.graph import build_graph, check_outputs, read_record

    p = _params(params)
    graph = build_graph(p)
    bad = 0
    for name, st in graph.items():
        rec = read_record(p, graph, name)
        if rec is None:
            out.print(f"[dim]- {name}: no record (never run)[/dim]")
            continue
        outputs = rec.get("outputs")
        if not isinstance(outputs, dict):
            out.print(f"[yellow]? {name}: record has no output hashes (older ovml)[/yellow]")
            continue
        problems = check_outputs(p.root / st.out, outputs, deep=not fast)
        if not problems:
            out.print(f"[green]✓ {name}[/green]: {len(outputs)} file(s) match")
            continue
        bad += 1
        for rel, why in problems:
            out.print(f"[red]✗ {name}[/red]: {st.out}/{rel} {why}", highlight=False, soft_wrap=True)
    if bad:
        console.print(f"[red]{bad} stage(s) differ from their records[/red]: rerun them")
        raise typer.Exit(1)


@app.command("dvc-yaml")
def dvc_yaml_cmd(
    params: ParamsOpt = DEFAULT_PARAMS,
    check: Annotated[bool, typer.Option(help="exit 1 if dvc.yaml is out of date")] = False,
    output: Annotated[Path | None, typer.Option(help="where to write")] = None,
) -> None:
    """Write dvc.yaml from params.yaml (or check that it is in step)."""
    from pipelines.graph import dvc_yaml
    from pipelines.io import write_text

    p = _params(params)
    target = output or p.root / "dvc.yaml"
    text = dvc_yaml(
        p, params.name if params.resolve().parent == target.resolve().parent else str(params)
    )
    if check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            console.print(f"[red]{target} is out of date[/red]: run `ovml dvc-yaml`")
            raise typer.Exit(1)
        console.print(f"{target} is in step with {params}")
        return
    write_text(target, text)
    console.print(f"wrote {target}")


@app.command()
def plan(
    params: ParamsOpt = DEFAULT_PARAMS,
    resources: Annotated[
        bool,
        typer.Option(
            help="per stage: bytes written, peak memory, GPU memory, GPU-hours (estimates, "
            "pipelines/capacity.py) against cluster.node; exit 1 if a stage does not fit"
        ),
    ] = False,
) -> None:
    """Dry run: every stage of the graph and what it needs (release folder, weights
    file, API key, network); runs nothing. Exit code 0 even when things are missing.
    With ``--resources``: the capacity plan instead; exit 1 when a stage exceeds the node."""
    from pipelines.plan import plan as make_plan
    from pipelines.plan import table_plans

    p = _params(params)
    if resources:
        _print_resources(p, str(params))
        return
    stages = make_plan(p)
    tab = Table(title=f"plan of {params}: stages in run order")
    for col in ("stage", "state", "needs / has"):
        tab.add_column(col, overflow="fold")
    styles = {"fresh": "dim", "ready": "green", "blocked": "red", "waits": "yellow"}
    for st in stages:
        what = [*(f"NEEDS {n}" for n in st.needs), *st.has]
        if st.waits_on:
            what.append(
                "after " + ", ".join(st.waits_on[:3]) + (" …" if len(st.waits_on) > 3 else "")
            )
        s = styles[st.state]
        tab.add_row(st.name, f"[{s}]{st.state}[/{s}]", "; ".join(what) or "—")
    out.print(tab)
    tt = Table(title="tables: cells, and paper rows still waiting for a method")
    for col in ("table", "paper", "cells", "pending variants", "published only"):
        tt.add_column(col, overflow="fold")
    for t in table_plans(p):
        cells = ", ".join(f"{d}/{v}" for d, v in t.cells) or "—"
        tt.add_row(
            t.name, t.paper or "—", cells, ", ".join(t.pending) or "—", str(t.published_only)
        )
    out.print(tt)
    counts = {k: sum(s.state == k for s in stages) for k in styles}
    out.print(f"{len(stages)} stages: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


def _print_resources(p: Params, where: str) -> None:
    from pipelines.capacity import capacity_plan, human

    node = p.cluster.node
    rows = capacity_plan(p)
    tab = Table(title=f"capacity plan of {where} (estimates; pipelines/capacity.py)")
    for col in ("stage", "writes", "memory", "GPU memory", "GPU-h", "fits", "assumes"):
        tab.add_column(col, overflow="fold")
    problems: list[str] = []
    for r in rows:
        bad = r.exceeds(node)
        problems += bad
        tab.add_row(
            r.stage,
            human(r.writes),
            human(r.memory),
            human(r.gpu_memory),
            f"{r.gpu_hours:.2f}",
            "[red]NO[/red]" if bad else "[green]yes[/green]",
            r.how,
        )
    out.print(tab)
    out.print(
        f"{len(rows)} stages: writes {human(sum(r.writes for r in rows))}, "
        f"{sum(r.gpu_hours for r in rows):.1f} GPU-hours; largest memory "
        f"{human(max(r.memory for r in rows))}, largest GPU memory "
        f"{human(max(r.gpu_memory for r in rows))}; node: {node.gpus} GPU x "
        f"{human(node.gpu_memory_bytes)}, {human(node.memory_bytes)} RAM, "
        f"{human(node.disk_bytes)} disk",
        highlight=False,
    )
    if problems:
        for line in problems:
            console.print(f"[red]too big:[/red] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def report(
    params: ParamsOpt = DEFAULT_PARAMS,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="folder (default <results>/report)")
    ] = None,
) -> None:
    """Write the HTML + Markdown report of every table, reproduced beside published,
    from the cells that exist (computes no cell; `ovml table NAME` does)."""
    from pipelines.report import build_report

    p = _params(params)
    folder = build_report(p, out_dir, params_file=str(params))
    out.print(f"report: {folder / 'index.html'}")


@app.command()
def ui(
    params: ParamsOpt = DEFAULT_PARAMS,
    dagster_port: int = 3000,
    mlflow_port: int = 5000,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    start_timeout: Annotated[
        float, typer.Option(help="seconds each server gets to answer before ovml ui gives up")
    ] = 300.0,
) -> None:
    """Start the Dagster UI and the MLflow UI on localhost; Ctrl-C stops both. Their URLs
    are printed once each answers (their output goes to log files in $DAGSTER_HOME)."""
    p = _params(params)
    _restore_interrupts()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "OVML_PARAMS": str(params.resolve()),
        "OVML_DAGSTER_UI_URL": f"http://{host}:{dagster_port}",
        "OVML_MLFLOW_UI_URL": f"http://{host}:{mlflow_port}",
    }
    env.setdefault("DAGSTER_HOME", str(p.root / ".dagster_home"))
    from dagster_project.instance import prepare_dagster_home, report_stage_records

    prepare_dagster_home(Path(env["DAGSTER_HOME"]))
    try:  # what the CLI and DVC built shows in the catalog (the sensor keeps it current)
        reported = report_stage_records(p, Path(env["DAGSTER_HOME"]), env)
    except Exception as err:  # the UI still starts; the stage_records sensor retries
        console.print(f"[yellow]warning:[/yellow] stage records not reported to Dagster: {err}")
        reported = []
    if reported:
        out.print(f"reported {len(reported)} stage record(s) to Dagster")
    logs = Path(env["DAGSTER_HOME"])
    dagster_log, mlflow_log = logs / "ovml-ui-dagster.log", logs / "ovml-ui-mlflow.log"
    procs = [
        _start_server(
            [
                str(bin_dir / "dagster"),
                "dev",
                "-m",
                "dagster_project.definitions",
                "-h",
                host,
                "-p",
                str(dagster_port),
            ],
            p.root,
            env,
            dagster_log,
        ),
        _start_server(
            [
                str(bin_dir / "mlflow"),
                "ui",
                "--backend-store-uri",
                p.tracking_uri(),
                "--host",
                host,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            p.root,
            # the UI runs no MLflow jobs (GenAI evaluation, scorers): without this, MLflow
            # 3.17 starts a job runner and 7 huey consumer processes next to the server
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            mlflow_log,
        ),
    ]
    from pipelines.tracking import experiment_url

    mlflow_base = f"http://{host}:{mlflow_port}"
    try:
        wait_until_serving(
            "Dagster UI",
            f"http://{host}:{dagster_port}/server_info",
            procs[0],
            dagster_log,
            start_timeout,
        )
        out.print(f"Dagster UI: http://{host}:{dagster_port}   (log: {dagster_log})")
        wait_until_serving(
            "MLflow UI", f"{mlflow_base}/health", procs[1], mlflow_log, start_timeout
        )
        out.print(f"MLflow UI:  {mlflow_base}   (log: {mlflow_log})")
        for name, exp_id in _mlflow_experiments(mlflow_base):
            out.print(f"  {name}: {experiment_url(exp_id, mlflow_base)}", soft_wrap=True)
        out.print("Ctrl-C to stop.")
    except UIStartError as err:
        console.print(f"[red]error:[/red] {err}")
        _stop(procs)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # Ctrl-C while the servers start: stop them too
        _stop(procs)
        return
    try:
        while all(pr.poll() is None for pr in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(procs)


class UIStartError(RuntimeError):
    """A UI server exited or did not answer in time (the message names it and its log)."""


def _start_server(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start one UI server in its own session, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_serving(
    name: str, url: str, proc: subprocess.Popen | None, log: Path, timeout: float
) -> None:
    """Poll ``url`` until it answers 200; fail clearly when ``proc`` exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise UIStartError(f"{name} exited with status {proc.returncode}; see its log {log}")
        if time.monotonic() >= deadline:
            raise UIStartError(
                f"{name} did not answer at {url} within {timeout:g} s; see its log {log}"
                " (or raise --start-timeout)"
            )
        time.sleep(0.5)


def _mlflow_experiments(base: str) -> list[tuple[str, str]]:
    """(name, id) of the tracking store's experiments, asked of the MLflow server."""
    import httpx

    try:
        res = httpx.get(
            f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 100}, timeout=10
        )
        res.raise_for_status()
        exps = res.json().get("experiments", [])
    except (httpx.HTTPError, ValueError):
        return []
    return [(e["name"], e["experiment_id"]) for e in exps if e.get("name") != "Default"]


def _stop(procs: list[subprocess.Popen]) -> None:
    for pr in procs:
        if pr.poll() is None:
            os.killpg(pr.pid, signal.SIGINT)
    for pr in procs:
        try:
            pr.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pr.pid, signal.SIGKILL)


def _restore_interrupts() -> None:
    """Ctrl-C and SIGTERM stop the UIs, also when started in the background (where a
    shell leaves SIGINT ignored, a disposition children would otherwise inherit)."""

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def main() -> None:  # pragma: no cover
    from pipelines.redact import install

    install()  # no credential in any log line or traceback
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
