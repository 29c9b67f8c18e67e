"""DVC: `dvc repro` runs the graph; a second repro does nothing; changing one variant's
parameter reruns only that cell and the table, and changing a corpus's size only the corpus
and what reads it. Runs the real dvc (an isolated uv tool)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_params
from pipelines.graph import dvc_yaml
from tests.conftest import REPO, TINY_PARAMS, write_params


def _dvc() -> str:
    found = shutil.which("dvc") or str(Path.home() / ".local/bin/dvc")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("dvc is not installed (make test installs it as a uv tool)")
        pytest.skip("dvc not installed; run `make dvc-tool`")
    return found


def _repro(ws: Path) -> list[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OVML_PARAMS": "",
    }
    env.pop("OVML_PARAMS")
    res = subprocess.run(
        [_dvc(), "repro"], cwd=ws, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return re.findall(r"Running stage '([^']+)'", res.stdout)


@pytest.mark.slow
def test_dvc_repro_is_incremental(tmp_path):
    ws = tmp_path / "ws"
    params = dict(TINY_PARAMS, tracking={"enabled": False})
    # a corpus stage and its one consumer, so that a corpus change is seen to rerun only them
    params["corpora"] = {"comc-sentences": {"kind": "comc-sentences", "n_sentences": 200}}
    params["variants"] = {
        **TINY_PARAMS["variants"],
        "comc": {"method": "comc", "epochs": 2, "threads": 1},
    }
    params["tables"] = {
        "tiny": {
            **TINY_PARAMS["tables"]["tiny"],
            "rows": [*TINY_PARAMS["tables"]["tiny"]["rows"], "comc"],
        }
    }
    write_params(ws, params)
    (ws / "pipelines").symlink_to(REPO / "pipelines")  # code deps are repo-relative paths
    (ws / "dvc.yaml").write_text(dvc_yaml(load_params(ws / "params.yaml")))
    subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=ws, check=True)

    first = _repro(ws)
    assert set(first) == set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    assert _repro(ws) == []

    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["variants"]["clip_zeroshot-single"]["prompts"] = "pool"
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sorted(_repro(ws)) == [
        "cell__toyworld__clip_zeroshot-single",
        "report__all",
        "table__tiny",
    ]
    assert (ws / "results/cells/toyworld/clip_zeroshot-single/metrics.json").exists()

    raw["corpora"]["comc-sentences"]["n_sentences"] = 260  # the corpus and what reads it
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sorted(_repro(ws)) == [
        "cell__toyworld__comc",
        "corpus__toyworld__comc-sentences",
        "report__all",
        "table__tiny",
    ]
    assert _repro(ws) == []
