"""Drive `ovml ui` in a real browser: Playwright's Python package over Debian's chromium
(``make browser`` installs it; Playwright's own browser download is never used).

Shared by tests/test_browser.py and bench/bench_ui.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def wait_ok(url: str, deadline: float) -> bool:
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


@dataclass
class UI:
    dagster: str
    mlflow: str
    proc: subprocess.Popen
    log: Path
    server_logs: Path  # the folder of the servers' logs (DAGSTER_HOME)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        res = httpx.post(
            f"{self.dagster}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        res.raise_for_status()
        body = res.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def runs(self) -> list[dict[str, Any]]:
        data = self.graphql(
            "{ runsOrError(limit: 50) { ... on Runs { results { runId status assetSelection "
            "{ path } tags { key value } } } } }"
        )
        return data["runsOrError"]["results"]

    def wait_run(self, known: set[str], timeout: float) -> dict[str, Any]:
        """The first run not in ``known`` once it has finished (or fail after timeout)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for run in self.runs():
                if run["runId"] not in known and run["status"] in (
                    "SUCCESS",
                    "FAILURE",
                    "CANCELED",
                ):
                    return run
            time.sleep(0.25)
        raise TimeoutError(f"no new run finished within {timeout:.0f} s\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        """The last lines of `ovml ui`'s output and of each server's log."""
        parts = []
        for log in [self.log, *sorted(self.server_logs.glob("ovml-ui-*.log"))]:
            try:
                lines = log.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                continue
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


@contextlib.contextmanager
def running_ui(params: Path, dagster_home: Path, timeout: float = 300) -> Iterator[UI]:
    """`ovml ui` on free ports in its own session; SIGINT to the group stops it."""
    d_port, m_port = free_port(), free_port()
    log = dagster_home.parent / f"ovml-ui-{d_port}.log"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri() in this process sets it
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ovml"),
                "ui",
                "--params",
                str(params),
                "--dagster-port",
                str(d_port),
                "--mlflow-port",
                str(m_port),
            ],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ui = UI(f"http://127.0.0.1:{d_port}", f"http://127.0.0.1:{m_port}", proc, log, dagster_home)
    try:
        deadline = time.time() + timeout
        if not wait_ok(f"{ui.dagster}/server_info", deadline):
            raise RuntimeError(f"Dagster UI did not come up\n{ui.tail()}")
        if not wait_ok(f"{ui.mlflow}/", deadline):
            raise RuntimeError(f"MLflow UI did not come up\n{ui.tail()}")
        _wait_code_location(ui, deadline)
        yield ui
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_code_location(ui: UI, deadline: float) -> None:
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
        "locationOrLoadError { __typename } } } } }"
    )
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError, RuntimeError, KeyError):
            entries = ui.graphql(query)["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                kinds = {e["locationOrLoadError"]["__typename"] for e in entries}
                if kinds != {"RepositoryLocation"}:
                    raise RuntimeError(f"code location failed to load: {kinds}\n{ui.tail()}")
                return
        time.sleep(0.5)
    raise RuntimeError(f"code location did not load\n{ui.tail()}")


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium not found: run `make browser` (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def goto(page: Any, url: str) -> None:
    """Open ``url`` and close Dagster's first-visit newsletter dialog if it shows."""
    page.goto(url, wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip", exact=True)
    with contextlib.suppress(Exception):
        skip.wait_for(timeout=3_000)
        skip.click()


def materialize_button(page: Any) -> Any:
    """The asset page's "Materialize" (or, partitioned, "Materialize...") button."""
    return page.locator("button", has_text="Materialize").first


def materialize_from_asset_page(
    page: Any, ui: UI, asset_path: str, timeout: float
) -> tuple[float, dict]:
    """Open the asset's page, click Materialize, wait for the run to succeed.
    Returns (seconds from click to success, the run)."""
    goto(page, f"{ui.dagster}/assets/{asset_path}")
    button = materialize_button(page)
    button.wait_for(timeout=60_000)
    known = {r["runId"] for r in ui.runs()}
    t0 = time.time()
    button.click()
    run = ui.wait_run(known, timeout)
    return time.time() - t0, run
