"""How fast the Dagster view is, printed as two figures (targets from issue 14):

1. definitions load: seconds for a fresh Python process to import
   ``dagster_project.definitions`` (what the webserver, every run and every check do),
   median of --repeats, wall and CPU time (on a busy machine the CPU time is what an idle
   core would take); also shown: ``import dagster`` alone in the same way, and whether
   torch / open_clip / a method module got imported (they must not). Target: <= 2 s.
2. click-to-success: a tiny workspace is built with the CLI (``ovml demo``), ``ovml ui``
   is started on free ports, and headless chromium (Playwright over Debian's binary)
   clicks "Materialize" on an asset's page; seconds from the click until Dagster reports
   the run SUCCESS, median of --clicks, for three launches (issue 22 item 4):
   the table (a fresh stage the run reuses), a reused cell (``random``, built by the
   demo; target <= 10 s) and a fresh ``random`` cell (a variant the demo never ran, so
   the step computes it: process start, imports, the cell, its MLflow run; target
   <= 15 s).

    python bench/bench_ui.py [--repeats 5] [--clicks 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import browser_page, materialize_from_asset_page, running_ui  # noqa: E402
from tests.conftest import TINY_PARAMS, write_params  # noqa: E402

PROBE = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import {module}
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
heavy = [m for m in ("torch", "open_clip", "mlflow", "pipelines.cells") if m in sys.modules]
heavy += [m for m in sys.modules if m.startswith("pipelines.methods.") and m != "pipelines.methods.base"]
print(json.dumps({{"seconds": dt, "cpu": cpu, "heavy": heavy}}))
"""


def import_seconds(
    module: str, repeats: int, env_params: Path | None
) -> tuple[float, float, list[str]]:
    """Median wall and CPU seconds of importing ``module`` in a fresh process (CPU time is
    what an idle core would take; wall time includes waiting on a busy machine)."""
    env = {**os.environ}
    if env_params is not None:
        env["OVML_PARAMS"] = str(env_params)
    times, cpus, heavy = [], [], []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(res["seconds"])
        cpus.append(res["cpu"])
        heavy = res["heavy"]
    return statistics.median(times), statistics.median(cpus), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-click", action="store_true", help="only the definitions figure")
    args = ap.parse_args()

    t_dagster, c_dagster, _ = import_seconds("dagster", args.repeats, None)
    t_defs, c_defs, heavy = import_seconds("dagster_project.definitions", args.repeats, None)
    load = os.getloadavg()[0]
    print(
        f"definitions load: {t_defs:.2f} s wall, {c_defs:.2f} s CPU (median of {args.repeats}; "
        f"import dagster alone {t_dagster:.2f} s wall, {c_dagster:.2f} s CPU; ovml's own part "
        f"{c_defs - c_dagster:.2f} s CPU); heavy modules imported: {', '.join(heavy) or 'none'}; "
        f"load average {load:.1f} on {os.cpu_count()} CPUs  [target <= 2 s, was 18 s]",
        flush=True,
    )

    if args.no_click:
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ovml-bench-ui-"))
    raw = json.loads(json.dumps(TINY_PARAMS))
    fresh = [f"random-fresh{i}" for i in range(args.clicks)]  # never run by the demo
    for i, name in enumerate(fresh):
        raw["variants"][name] = {"method": "random", "description": f"bench_ui: fresh cell {i}"}
    # a table outside demo_tables names them, so each is a cell asset the demo leaves unbuilt
    raw["tables"]["bench-fresh"] = {"title": "bench_ui", "datasets": ["toyworld"], "rows": fresh}
    params = write_params(work, raw)
    t0 = time.time()
    subprocess.run(
        [str(Path(sys.executable).parent / "ovml"), "demo", "--params", str(params)],
        cwd=work,
        check=True,
        capture_output=True,
    )
    print(f"(workspace built with `ovml demo` in {time.time() - t0:.0f} s: {work})", flush=True)
    launches = {
        "table stage, reused": (["table/tiny"] * args.clicks, "<= 10 s, was 60-68 s"),
        "random cell, reused": (["cells/toyworld/random"] * args.clicks, "<= 10 s, was 52.5 s"),
        "random cell, fresh": ([f"cells/toyworld/{v}" for v in fresh], "<= 15 s"),
    }
    with running_ui(params, work / "dagster_home") as ui, browser_page() as page:
        for label, (assets, target) in launches.items():
            clicks = []
            for asset in assets:
                seconds, run = materialize_from_asset_page(page, ui, asset, timeout=240)
                if run["status"] != "SUCCESS":
                    raise SystemExit(f"run {run['runId']} ended {run['status']}\n{ui.tail()}")
                clicks.append(seconds)
            print(
                f"click-to-success ({label}): {statistics.median(clicks):.1f} s (median of "
                f"{len(clicks)}: {', '.join(f'{c:.1f}' for c in clicks)}; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)  [target {target}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
