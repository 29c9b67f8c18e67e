"""How fast the Dagster view is, printed as two figures (targets from issue 14):

1. definitions load: seconds for a fresh Python process to import
   ``dagster_project.definitions`` (what the webserver, every run and every check do),
   median of --repeats; also shown: ``import dagster`` alone in the same way, and whether
   torch / open_clip / a method module got imported (they must not). Target: <= 2 s.
2. click-to-success: a tiny workspace is built with the CLI (``ovml demo``), ``ovml ui``
   is started on free ports, and headless chromium (Playwright over Debian's binary)
   clicks "Materialize" on the table asset's page, a fresh stage the run reuses;
   seconds from the click until Dagster reports the run SUCCESS, median of --clicks.
   Target: <= 10 s.

    python bench/bench_ui.py [--repeats 5] [--clicks 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
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
t0 = time.perf_counter()
import {module}
dt = time.perf_counter() - t0
heavy = [m for m in ("torch", "open_clip", "mlflow", "pipelines.cells") if m in sys.modules]
heavy += [m for m in sys.modules if m.startswith("pipelines.methods.") and m != "pipelines.methods.base"]
print(json.dumps({{"seconds": dt, "heavy": heavy}}))
"""


def import_seconds(module: str, repeats: int, env_params: Path | None) -> tuple[float, list[str]]:
    import os

    env = {**os.environ}
    if env_params is not None:
        env["OVML_PARAMS"] = str(env_params)
    times, heavy = [], []
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
        heavy = res["heavy"]
    return statistics.median(times), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    t_dagster, _ = import_seconds("dagster", args.repeats, None)
    t_defs, heavy = import_seconds("dagster_project.definitions", args.repeats, None)
    print(
        f"definitions load: {t_defs:.2f} s (median of {args.repeats}; import dagster alone "
        f"{t_dagster:.2f} s; ovml's own part {t_defs - t_dagster:.2f} s); heavy modules "
        f"imported: {', '.join(heavy) or 'none'}  [target <= 2 s, was 18 s]",
        flush=True,
    )

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ovml-bench-ui-"))
    params = write_params(work, TINY_PARAMS)
    t0 = time.time()
    subprocess.run(
        [str(Path(sys.executable).parent / "ovml"), "demo", "--params", str(params)],
        cwd=work,
        check=True,
        capture_output=True,
    )
    print(f"(workspace built with `ovml demo` in {time.time() - t0:.0f} s: {work})", flush=True)
    clicks = []
    with running_ui(params, work / "dagster_home") as ui, browser_page() as page:
        for _ in range(args.clicks):
            seconds, run = materialize_from_asset_page(page, ui, "table/tiny", timeout=120)
            if run["status"] != "SUCCESS":
                raise SystemExit(f"run {run['runId']} ended {run['status']}\n{ui.tail()}")
            clicks.append(seconds)
    print(
        f"click-to-success (fresh table stage, reused): {statistics.median(clicks):.1f} s "
        f"(median of {len(clicks)}: {', '.join(f'{c:.1f}' for c in clicks)})  "
        "[target <= 10 s, was 60-68 s]",
        flush=True,
    )


if __name__ == "__main__":
    main()
