"""params.yaml validation: one clear error naming the file and the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipelines.config import ConfigError, available_methods, load_params
from tests.conftest import REPO, write_params


def test_repo_params_load_and_derive_cells():
    params = load_params(REPO / "params.yaml")
    assert ("toyworld", "clip_zeroshot") in params.cells
    assert params.backbone_for("toyworld", "clip_zeroshot") == "toy-clip"
    assert {"random", "clip_zeroshot"} <= set(available_methods())


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.update(colour="red"), "colour: unknown key"),
        (
            lambda p: p["datasets"]["toyworld"].update(backbon="x"),
            "datasets.toyworld.backbon: unknown key",
        ),
        (
            lambda p: p["variants"].update(bad={"method": "nope"}),
            "variants.bad.method: unknown method 'nope'",
        ),
        (
            lambda p: p["variants"]["clip_zeroshot"].update(prompts="many"),
            "variants.clip_zeroshot.prompts",
        ),
        (lambda p: p["variants"]["random"].update(lr=0.1), "variants.random.lr"),
        (
            lambda p: p["tables"]["tiny"].update(rows=["random", "ghost"]),
            "tables.tiny.rows: unknown variant 'ghost'",
        ),
        (
            lambda p: p["datasets"]["toyworld"]["eval"].update(top_k=[0]),
            "datasets.toyworld.eval.top_k.0",
        ),
        (
            lambda p: p["backbones"]["toy-clip"].update(weights="http://x"),
            "backbones.toy-clip.weights",
        ),
        (lambda p: p.update(demo_tables=["nope"]), "demo_tables: unknown table 'nope'"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, tiny_params_dict, mutate, expected):
    mutate(tiny_params_dict)
    path = write_params(tmp_path, tiny_params_dict)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndatasets: [\n  a: b\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def test_cli_prints_one_line_no_traceback(tmp_path, tiny_params_dict):
    tiny_params_dict["variants"]["random"]["colour"] = 1
    path = write_params(tmp_path, tiny_params_dict)
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "list", "--params", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "variants.random.colour" in res.stderr and str(path) in res.stderr


def test_variant_options_validated_by_method_config(tmp_path, tiny_params_dict):
    path = write_params(tmp_path, tiny_params_dict)
    params = load_params(path)
    assert params.method_config("clip_zeroshot-single").prompts == "single"
    assert yaml.safe_load(path.read_text())["variants"]["random"] == {"method": "random"}
