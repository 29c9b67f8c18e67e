"""Shared fixtures: a tiny workspace (params.yaml + folders in a tmp dir) on which the
whole pipeline runs for real in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

TINY_PARAMS = {
    "seed": 0,
    "device": "cpu",
    "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db"},
    "datasets": {
        "toyworld": {
            "source": "toyworld",
            "backbone": "toy-clip",
            "options": {
                "image_size": 64,
                "n_pretrain": 768,
                "n_train": 192,
                "n_test": 160,
                "seed": 0,
            },
            "eval": {"top_k": [3, 5], "zero_positive": "zero", "keep_images": "all"},
        }
    },
    "backbones": {
        "toy-clip": {
            "model": "ovml-tiny-vit",
            "weights": "pretrain",
            "pretrain": {
                "dataset": "toyworld",
                "epochs": 2,
                "batch_size": 128,
                "lr": 2e-3,
                "warmup_steps": 2,
            },
        }
    },
    "variants": {
        "random": {"method": "random"},
        "clip_zeroshot": {"method": "clip_zeroshot", "prompts": "pool"},
        "clip_zeroshot-single": {"method": "clip_zeroshot", "prompts": "single"},
    },
    "tables": {
        "tiny": {
            "title": "tiny",
            "datasets": ["toyworld"],
            "rows": ["random", "clip_zeroshot", "clip_zeroshot-single"],
        }
    },
    "demo_tables": ["tiny"],
}


def dvc_binary() -> str:
    """The dvc tool (`make dvc-tool` installs it with uv); a failure in CI, a skip elsewhere."""
    import shutil

    found = shutil.which("dvc") or str(Path.home() / ".local/bin/dvc")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("dvc is not installed (make test installs it as a uv tool)")
        pytest.skip("dvc not installed; run `make dvc-tool`")
    return found


def write_params(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params_dict() -> dict:
    import copy

    return copy.deepcopy(TINY_PARAMS)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A tiny workspace whose demo graph has been run once (shared, read-only for tests)."""
    from pipelines.config import load_params
    from pipelines.runner import run_stage, run_stages

    root = tmp_path_factory.mktemp("tiny")
    path = write_params(root, TINY_PARAMS)
    params = load_params(path)
    run_stages(params, ["table@tiny"], lambda p, st: run_stage(p, st, progress=False))
    return path


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """A test that calls ``mlflow.set_tracking_uri`` itself sets $MLFLOW_TRACKING_URI for
    the whole process, and the environment wins over params: restore it after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
