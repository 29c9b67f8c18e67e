"""Issue 8: nothing lost, nothing silently wrong. One test (or more) per finding; each
fails on the code before the fix. The end-to-end toyworld probe is tests/test_adversarial.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import ConfigError, load_params
from tests.conftest import REPO, write_params

try:
    from tests import release_fixtures as rf
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import release_fixtures as rf


def ovml(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


# ------------------------------------------------------------ 1. prepare --out data loss
def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_prepare_into_a_shared_folder_keeps_other_files(tmp_path: Path):
    """`--out data` deleted the other datasets and downloaded images."""
    rel = rf.build_coco(tmp_path / "release")
    data = tmp_path / "data"
    (data / "toyworld").mkdir(parents=True)
    (data / "toyworld" / "labels.json").write_text("{}")
    (data / "coco-images" / "a.jpg").parent.mkdir()
    (data / "coco-images" / "a.jpg").write_bytes(b"jpeg")
    before = _files(data)
    code, text = ovml("data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(data))
    assert code == 1
    assert "did not write" in text and "--overwrite" in text
    assert _files(data) == before
    code, text = ovml(
        "data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(data), "--overwrite"
    )
    assert code == 0, text
    assert before <= _files(data)  # nothing of the user's was removed
    assert {"labels.json", "train.npz", "test.npz", "meta.json"} <= _files(data)
    # a second prepare into its own folder needs no --overwrite and replaces only its files
    out = tmp_path / "prepared"
    assert (
        ovml("data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(out))[0] == 0
    )
    assert (
        ovml("data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(out))[0] == 0
    )


@pytest.mark.parametrize("where", ["same", "parent"])
def test_prepare_refuses_an_out_that_is_or_contains_the_release(tmp_path: Path, where: str):
    """`--out R --release R` deleted the release (88 files became 5)."""
    rel = rf.build_coco(tmp_path / "R")
    before = _files(tmp_path)
    out = rel.root if where == "same" else tmp_path
    for extra in ([], ["--overwrite"]):
        code, text = ovml(
            "data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(out), *extra
        )
        assert code == 1
        assert "the release" in text
    assert _files(tmp_path) == before


# --------------------------------------------------------- 5. duplicate YAML keys
def test_duplicate_yaml_key_is_an_error_naming_both_lines(tmp_path: Path, tiny_params_dict):
    path = write_params(tmp_path, tiny_params_dict)
    text = path.read_text().replace(
        "  clip_zeroshot:\n    method: clip_zeroshot\n",
        "  clip_zeroshot:\n    method: clip_zeroshot\n    prompts: pool\n    prompts: single\n",
        1,
    )
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index("    prompts: pool") + 1
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert f"params.yaml:{first + 1}: duplicate key 'prompts'" in str(err.value)
    assert f"line {first}" in str(err.value)
    code, out = ovml("list", "-p", str(path))
    assert code == 2 and "duplicate key" in out


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path):
    from pipelines.config import UniqueKeyLoader

    text = "base: &b\n  lr: 1\n  x: 2\nv:\n  <<: *b\n  lr: 3\n"
    import yaml

    assert yaml.load(text, Loader=UniqueKeyLoader) == {
        "base": {"lr": 1, "x": 2},
        "v": {"lr": 3, "x": 2},
    }
    load_params(REPO / "params.yaml")  # the repository's params (anchors, merges) load


# ---------------------------------------------------- 6. heads must divide the width
@pytest.mark.parametrize("method", ["qks", "epsilon"])
def test_heads_that_do_not_divide_the_embedding_are_a_params_error(
    tmp_path: Path, tiny_params_dict, method: str
):
    tiny_params_dict["variants"]["bad"] = {"method": method, "heads": 7}
    tiny_params_dict["tables"]["tiny"]["rows"].append("bad")
    with pytest.raises(ConfigError, match=r"variants\.bad\.heads: 7 does not divide .* 128"):
        load_params(write_params(tmp_path, tiny_params_dict))
    tiny_params_dict["variants"]["bad"]["heads"] = 8
    load_params(write_params(tmp_path, tiny_params_dict))


# ------------------------------------------------ 7. a prepare that keeps no image
def test_prepare_with_a_missing_images_dir_is_an_error(tmp_path: Path):
    rel = rf.build_coco(tmp_path / "release")
    out = tmp_path / "out"
    code, text = ovml(
        "data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(out),
        "-o", "images_dir=/nonexistent", "-o", "drop_missing=true",
    )  # fmt: skip
    assert code == 1 and "/nonexistent" in text
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = ovml(
        "data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(out),
        "-o", f"images_dir={empty}", "-o", "drop_missing=true",
    )  # fmt: skip
    assert code == 1 and "keeps 0 images" in text
    assert not (out / "labels.json").exists()


# --------------------------------------------------------- 8. downloader options
@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("image_id,url\na,http://example.invalid/a.jpg\n")
    return path


@pytest.mark.parametrize("value", ["0", "-5"])
def test_download_max_bytes_must_be_positive(manifest: Path, tmp_path: Path, value: str):
    code, text = ovml(
        "data", "download", "--manifest", str(manifest), "--out", str(tmp_path / "o"),
        "--max-bytes", value,
    )  # fmt: skip
    assert code == 2
    assert "--max-bytes" in text and "greater than or equal to 1" in text
    assert "Traceback" not in text and not (tmp_path / "o").exists()


def test_download_out_that_is_a_file(manifest: Path, tmp_path: Path):
    (tmp_path / "f").write_text("x")
    code, text = ovml("data", "download", "--manifest", str(manifest), "--out", str(tmp_path / "f"))
    assert code == 2 and "is a file" in text


def test_unknown_prepare_option_lists_the_valid_ones(tmp_path: Path):
    rel = rf.build_coco(tmp_path / "release")
    code, text = ovml(
        "data", "prepare", "coco-zsl", "--release", str(rel.root), "--out", str(tmp_path / "o"),
        "-o", "drop_mising=true",
    )  # fmt: skip
    assert code == 1
    assert "drop_mising" in text and "valid:" in text and "drop_missing" in text


# --------------------------------------------------------- 9, 10. tracking secrets
def test_redact_masks_passwords_and_secret_query_values():
    from pipelines.redact import redact, strip_credentials

    s = redact("failed: http://user:secret@127.0.0.1:9/api?x=1&token=abc&sig=zz")
    assert "secret" not in s and "abc" not in s and "zz" not in s
    assert "http://user:***@127.0.0.1:9/" in s and "x=1" in s
    assert (
        strip_credentials("https://u:pw@h.example:8443/p.jpg?a=1")
        == "https://h.example:8443/p.jpg?a=1"
    )


def test_unreachable_tracking_server_fails_fast_in_one_redacted_line(
    tmp_path: Path, tiny_params_dict, monkeypatch
):
    """The probe waited 4 min 26 s, then printed a traceback holding `user:secret`."""
    monkeypatch.delenv("OVML_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny_params_dict["tracking"] = {"enabled": True, "uri": "http://user:secret@127.0.0.1:9/"}
    path = write_params(tmp_path, tiny_params_dict)
    params = load_params(path)
    from pipelines.tracking import TrackingError, mlflow_run

    t0 = time.monotonic()
    with pytest.raises(TrackingError) as err, mlflow_run(params, "x", "y", tags={}, run_params={}):
        pass
    assert time.monotonic() - t0 < 30
    assert "secret" not in str(err.value) and "unreachable" in str(err.value)
    assert "127.0.0.1:9" in str(err.value)
    # through the CLI: one line, no traceback, no password (the cell needs the backbone,
    # whose pre-training opens the MLflow run first)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "toyworld", "random", "-p", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "OVML_TRACKING": "1"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "secret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "unreachable" in proc.stderr


def test_env_tracking_uri_wins_over_params(tmp_path: Path, tiny_params_dict, monkeypatch):
    path = write_params(tmp_path, tiny_params_dict)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert load_params(path).tracking_uri() == "http://mlflow.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load_params(path).tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_log_records_and_tracebacks_are_redacted(capsys):
    import logging

    from pipelines import redact

    redact.install()
    record = logging.getLogger("x").makeRecord(
        "x", logging.ERROR, __file__, 1, "cannot reach %s", ("http://u:hunter2@h/",), None
    )
    assert "hunter2" not in record.getMessage()
    try:
        raise RuntimeError("connect http://u:hunter2@h/ failed")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "hunter2" not in capsys.readouterr().err


def test_dagster_resource_reads_the_tracking_uri_through_envvar(monkeypatch):
    import dagster as dg

    from dagster_project.resources import MlflowTracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:pw@mlflow.example/")
    res = MlflowTracking.from_env()
    assert isinstance(res.tracking_uri, dg.EnvVar)
    assert res.tracking_uri.env_var_name == "MLFLOW_TRACKING_URI"  # the snapshot: name only
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert MlflowTracking.from_env().tracking_uri is None


# ------------------------------------------------ 11, 12. downloader: credentials, SSRF
def test_manifest_credentials_never_reach_ledger_or_shards(tmp_path: Path):
    from fault_server import FaultServer

    from pipelines.data.download import DownloadConfig, download_images

    with FaultServer() as srv:
        url = srv.url("/good/one").replace("http://", "http://alice:pa55word@")
        manifest = pl.DataFrame({"image_id": ["a"], "url": [url]})
        out = tmp_path / "dl"
        summary = download_images(
            manifest,
            out,
            workers=1,
            config=DownloadConfig(allow_private_hosts=True, trust_env=False),
            progress=False,
        )
    assert summary.counts["ok"] == 1
    for path in out.rglob("*"):
        if path.is_file():
            assert b"pa55word" not in path.read_bytes(), path
    assert pl.read_parquet(out / "ledger.parquet")["url"][0].startswith("http://127.0.0.1:")


def test_private_hosts_are_refused_by_default_also_through_redirects(tmp_path: Path):
    from fault_server import FaultServer

    from pipelines.data.download import DEAD_BLOCKED_HOST, DownloadConfig, download_images

    with FaultServer() as srv:
        manifest = pl.DataFrame(
            {
                "image_id": ["direct", "localhost"],
                "url": [
                    srv.url("/good/one"),
                    srv.url("/good/two").replace("127.0.0.1", "localhost"),
                ],
            }
        )
        download_images(
            manifest, tmp_path / "a", config=DownloadConfig(trust_env=False), progress=False
        )
        assert srv.total_requests() == 0  # nothing was sent to the local server
    ledger = pl.read_parquet(tmp_path / "a" / "ledger.parquet")
    assert ledger["status"].to_list() == [DEAD_BLOCKED_HOST, DEAD_BLOCKED_HOST]
    assert "loopback" in ledger["error"][0] and "--allow-private-hosts" in ledger["error"][0]


def test_redirect_to_a_private_host_is_refused(tmp_path: Path, monkeypatch):
    """A public-looking first hop that redirects inside the network is refused at the hop."""
    import httpx

    from pipelines.data import download as dl

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "public.example":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})
        return httpx.Response(200, content=b"secret metadata")

    sent: list[str] = []

    async def resolve(self, host, port, type=0):  # noqa: A002
        sent.append(host)
        ip = "93.184.216.34" if host == "public.example" else host
        return [(2, 1, 6, "", (ip, port))]

    real_client = httpx.AsyncClient

    def client(*args, **kwargs):
        kwargs["transport"] = httpx.MockTransport(handler)
        return real_client(*args, **kwargs)

    monkeypatch.setattr(dl.httpx, "AsyncClient", client)
    import asyncio

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    manifest = pl.DataFrame({"image_id": ["x"], "url": ["http://public.example/img.jpg"]})
    dl.download_images(
        manifest, tmp_path / "o", config=dl.DownloadConfig(trust_env=False), progress=False
    )
    ledger = pl.read_parquet(tmp_path / "o" / "ledger.parquet")
    assert ledger["status"][0] == dl.DEAD_BLOCKED_HOST
    assert "169.254.169.254" in ledger["error"][0] and "link-local" in ledger["error"][0]
    assert sent == ["public.example", "169.254.169.254"]


# ------------------------------------------------------------ 13. stale .tmp leftovers
def test_killed_atomic_writer_leaves_tmp_that_the_next_run_cleans(tmp_path: Path):
    final = tmp_path / "features" / "toyworld" / "toy-clip"
    code = (
        "import os, signal, sys\n"
        "from pipelines.io import atomic_path\n"
        f"with atomic_path({str(final)!r}) as tmp:\n"
        "    tmp.mkdir(parents=True)\n"
        "    (tmp / 'shard').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120)
    assert proc.returncode == -9
    left = list(final.parent.glob(".toy-clip.*.tmp"))
    assert len(left) == 1  # the kill left its temporary folder

    from pipelines.io import atomic_path

    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
    assert not list(final.parent.glob(".toy-clip.*.tmp"))
    assert final.is_dir()


def test_a_live_writers_tmp_is_left_alone(tmp_path: Path):
    from pipelines.io import clean_stale_tmp, owner_tag

    mine = tmp_path / f".x.{owner_tag()}.abcd.tmp"
    mine.mkdir()
    assert clean_stale_tmp(tmp_path / "x") == []
    assert mine.exists()


# ------------------------------------------------ 4. record holds output hashes
def test_stage_record_holds_output_hashes(tmp_path: Path, tiny_params_dict):
    from pipelines.graph import STAMP, build_graph, stage_status, write_stamp
    from pipelines.io import sha256_file

    tiny_params_dict["tracking"] = {"enabled": False}
    params = load_params(write_params(tmp_path, tiny_params_dict))
    graph = build_graph(params)
    name = "table@tiny"
    out = params.root / graph[name].out
    out.mkdir(parents=True)
    (out / "table.md").write_text("| a |\n")
    write_stamp(params, graph, name)
    rec = json.loads((out / STAMP).read_text())
    assert rec["outputs"]["table.md"]["sha256"] == sha256_file(out / "table.md")
    assert rec["outputs"]["table.md"]["size"] == 6
    assert stage_status(params, graph, name) == (True, "up to date")
    os.utime(out / "table.md", ns=(1, 1))  # a touch alone: hashed, still the same
    assert stage_status(params, graph, name)[0]
    (out / "table.md").write_text("| b |\n")  # same size, other content
    fresh, why = stage_status(params, graph, name)
    assert not fresh and "table.md" in why and "content" in why


def test_recorded_scores_still_load(tiny_workspace: Path):
    """Sanity: the shared workspace's records match its files (no false staleness)."""
    from pipelines.graph import build_graph, stage_status, upstream

    params = load_params(tiny_workspace)
    graph = build_graph(params)
    built = upstream(graph, ["table@tiny"])  # what the fixture ran (not the report stage)
    states = {n: stage_status(params, graph, n) for n in built}
    assert all(fresh for fresh, _ in states.values()), states
    assert np.isfinite(
        np.load(params.root / "results/cells/toyworld/random/scores.npz")["scores"]
    ).all()


def test_a_tracked_run_leaves_no_tracking_uri_in_the_environment(tmp_path, tiny_params_dict):
    """mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI, and the environment wins over
    params (finding 10): left there, the next workspace of the same process (a Dagster
    run, a notebook) would track into this one's store."""
    from pipelines.tracking import mlflow_run

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    first = load_params(write_params(tmp_path / "a", tiny_params_dict))
    with mlflow_run(first, "ovml/probe", "probe", tags={}, run_params={}):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = load_params(write_params(tmp_path / "b", tiny_params_dict))
    assert second.tracking_uri() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
