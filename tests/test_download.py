"""Tests for pipelines/data/download.py against a local fault-injecting server (no internet)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from fault_server import FaultServer, image_bytes, placeholder_bytes
from PIL import Image

from pipelines.data.download import (
    FLICKR_PLACEHOLDER_SHA256,
    STATUSES,
    DownloadConfig,
    ManifestError,
    backoff_delay,
    download_images,
    load_manifest,
    make_keys,
    parse_retry_after,
    summarize_ledger,
)

ROOT = Path(__file__).resolve().parents[1]

# short timeouts, tiny backoff: every fault resolves in well under a second per attempt
FAST = DownloadConfig(
    connect_timeout=2.0,
    read_timeout=1.0,  # /slow sleeps 5 s; every other route answers at once
    total_timeout=2.0,  # /drip keeps the read alive but never finishes
    trust_env=False,
    max_retries=2,
    backoff_base=0.01,
    backoff_max=0.05,
    retry_after_max=5.0,
    max_body_bytes=50_000,
    shard_size=4,
    seed=0,
    allow_private_hosts=True,  # the fault server listens on 127.0.0.1
)


@pytest.fixture
def server():
    with FaultServer(slow_delay=5.0) as srv:
        yield srv


def _manifest(srv: FaultServer, rows: list[tuple[str, str]], md5: dict[str, str] | None = None):
    return pl.DataFrame(
        {
            "image_id": [i for i, _ in rows],
            "url": [srv.url(p) if p.startswith("/") else p for _, p in rows],
            "md5": [(md5 or {}).get(i) for i, _ in rows],
        },
        schema={"image_id": pl.Utf8, "url": pl.Utf8, "md5": pl.Utf8},
    )


def _ledger(out: Path) -> dict[str, dict]:
    df = pl.read_parquet(out / "ledger.parquet")
    rows = df.to_dicts()
    assert len(rows) == len({r["image_id"] for r in rows}), "one ledger row per image_id"
    return {r["image_id"]: r for r in rows}


def _shard_samples(out: Path) -> list[tuple[str, dict, str, bytes]]:
    """(shard, json meta, image member name, image bytes) for every sample of every shard."""
    samples = []
    for shard in sorted((out / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                images = [n for n in members if n.startswith(key + ".") and n != name]
                assert len(images) == 1, (shard, key, images)
                samples.append((shard.name, json.loads(data), images[0], members[images[0]]))
    return samples


def _leftover_temp_files(out: Path) -> list[str]:
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.endswith((".tmp",)) or p.name.startswith(".salvage-")
    )


# --------------------------------------------------------------------------- the fault matrix


def test_every_fault_gets_its_exact_status(server: FaultServer, tmp_path: Path):
    rows = [
        ("good.jpg", "/good/g1?cd=../../evil.sh"),
        ("png", "/png/p1"),
        ("md5-hex-ok", "/good/m1"),
        ("md5-b64-ok", "/good/m2"),
        ("md5-wrong", "/good/m3"),
        ("404", "/status/404/a"),
        ("410", "/status/410/a"),
        ("403", "/status/403/a"),
        ("500", "/status/500/a"),
        ("placeholder-redirect", "/redirect_placeholder/a"),
        ("placeholder-body", "/placeholder/a"),
        ("html", "/html/a"),
        ("truncated", "/truncated/a"),
        ("big-cl", "/big/a?bytes=200000"),
        ("big-chunked", "/big/b?bytes=200000&chunked=1"),
        ("slow", "/slow/a"),
        ("drip", "/drip/a?every=0.05"),
        ("flaky", "/flaky/a?fails=2"),
        ("ratelimit", "/ratelimit/a?fails=1&retry_after=1"),
        ("ratelimit-date", "/ratelimit/b?fails=1&retry_after=date:2"),
        ("ratelimit-forever", "/ratelimit/c?retry_after=0"),
        ("reset", "/reset/a"),
        ("reset-once", "/reset/b?fails=1&rst=1"),
        ("redirect", "/redirect/r1"),
        ("ftp", "ftp://127.0.0.1/x.jpg"),
        ("a/b", "/good/c1"),  # a/b and a_b both sanitise to a_b
        ("a_b", "/good/c2"),
        ("../../etc/passwd", "/good/c3"),
    ]
    md5 = {
        "md5-hex-ok": hashlib.md5(image_bytes("m1")).hexdigest(),
        "md5-b64-ok": base64.b64encode(hashlib.md5(image_bytes("m2")).digest()).decode(),
        "md5-wrong": hashlib.md5(b"something else").hexdigest(),
    }
    out = tmp_path / "out"
    t0 = time.monotonic()
    summary = download_images(
        _manifest(server, rows, md5), out, workers=8, config=FAST, progress=False
    )
    assert time.monotonic() - t0 < 30

    # image_id -> (status, attempts, http_status)
    expected = {
        "good.jpg": ("ok", 1, 200),
        "png": ("ok", 1, 200),
        "md5-hex-ok": ("ok", 1, 200),
        "md5-b64-ok": ("ok", 1, 200),
        "md5-wrong": ("dead_md5_mismatch", 1, 200),
        "404": ("dead_http", 1, 404),
        "410": ("dead_http", 1, 410),
        "403": ("dead_http", 1, 403),
        "500": ("transient_http", 3, 500),
        "placeholder-redirect": ("dead_placeholder", 1, 302),
        "placeholder-body": ("dead_placeholder", 1, 200),
        "html": ("dead_not_image", 1, 200),
        "truncated": ("dead_not_image", 1, 200),
        "big-cl": ("dead_too_large", 1, 200),
        "big-chunked": ("dead_too_large", 1, 200),
        "slow": ("transient_timeout", 3, None),
        "drip": ("transient_timeout", 3, None),
        "flaky": ("ok", 3, 200),
        "ratelimit": ("ok", 2, 200),
        "ratelimit-date": ("ok", 2, 200),
        "ratelimit-forever": ("transient_http", 3, 429),
        "reset": ("transient_connection", 3, None),
        "reset-once": ("ok", 2, 200),
        "redirect": ("ok", 1, 200),
        "ftp": ("dead_bad_url", 0, None),
        "a/b": ("ok", 1, 200),
        "a_b": ("ok", 1, 200),
        "../../etc/passwd": ("ok", 1, 200),
    }
    ledger = _ledger(out)
    got = {i: (r["status"], r["attempts"], r["http_status"]) for i, r in ledger.items()}
    assert got == expected
    assert set(ledger) == {i for i, _ in rows}

    # the server saw exactly those attempts: permanent failures fetched once, no extra hops
    for image_id, path in rows:
        if path.startswith("/"):
            assert server.count(path) == expected[image_id][1], image_id
    assert server.count("/photo_unavailable.png") == 0  # placeholder redirect not followed
    assert server.count("/good/r1") == 1  # the one real redirect was followed once

    # Retry-After honoured (seconds and HTTP date), flaky backoff short
    for path, min_gap in [
        ("/ratelimit/a?fails=1&retry_after=1", 0.95),
        ("/ratelimit/b?fails=1&retry_after=date:2", 0.95),
    ]:
        starts = sorted(h.t_start for h in server.requests_for(path))
        assert starts[1] - starts[0] >= min_gap, path

    # errors say what happened
    assert "Content-Length 200000" in ledger["big-cl"]["error"]
    assert "over 50000" in ledger["big-chunked"]["error"]
    assert ledger["big-chunked"]["bytes"] > 50_000
    assert "photo_unavailable" in ledger["placeholder-redirect"]["error"]
    assert ledger["placeholder-body"]["sha256"] == FLICKR_PLACEHOLDER_SHA256
    assert ledger["placeholder-body"]["bytes"] == len(placeholder_bytes()) == 3344
    assert "expected" in ledger["md5-wrong"]["error"]

    # shards: each ok image exactly once, bytes == what the server sent == ledger sha256
    samples = _shard_samples(out)
    ok_ids = sorted(i for i, r in ledger.items() if r["status"] == "ok")
    assert sorted(meta["image_id"] for _, meta, _, _ in samples) == ok_ids
    path_of = dict(rows)
    for shard, meta, member, data in samples:
        row = ledger[meta["image_id"]]
        assert row["shard"] == shard and row["key"] == meta["key"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"] == meta["sha256"]
        assert row["bytes"] == len(data)
        src = path_of[meta["image_id"]]
        body = server.expected_body(
            src.replace("/redirect/", "/good/").replace("/flaky/", "/good/")
        )
        if not src.startswith(("/ratelimit", "/reset")):
            assert data == body, meta["image_id"]
        assert member == f"{meta['key']}.{'png' if src.startswith('/png') else 'jpg'}"
        assert "/" not in member and ".." not in member.split(".")[0]
    keys = [meta["key"] for _, meta, _, _ in samples]
    assert len(set(keys)) == len(keys)
    assert ledger["good.jpg"]["key"] == "good_jpg"  # no dot inside a webdataset key
    assert ledger["a/b"]["key"] != ledger["a_b"]["key"]
    assert all(not k.startswith("evil") for k in keys)

    # summary: counts per status, fraction available, file on disk
    assert summary.total == len(rows)
    assert summary.ok == len(ok_ids) == 12
    assert summary.counts["dead_http"] == 3
    assert summary.fraction_available == pytest.approx(12 / len(rows))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary.to_dict()
    assert set(on_disk["counts"]) == set(STATUSES)
    assert on_disk["counts"]["transient_timeout"] == 2
    assert _leftover_temp_files(out) == []


def test_shards_read_back_with_webdataset(server: FaultServer, tmp_path: Path):
    import webdataset as wds

    rows = [(f"img {i}.jpg", f"/good/w{i}") for i in range(7)]
    out = tmp_path / "out"
    download_images(_manifest(server, rows), out, workers=3, config=FAST, progress=False)
    shards = sorted(str(p) for p in (out / "shards").glob("shard-*.tar"))
    assert [Path(s).name for s in shards] == ["shard-00000.tar", "shard-00001.tar"]  # 4 + 3
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        seen[meta["image_id"]] = sample["__key__"]
        assert sample["jpg"] == image_bytes(f"w{int(meta['image_id'].split()[1][0])}")
    assert seen == {f"img {i}.jpg": f"img_{i}_jpg" for i in range(7)}


def test_per_host_connection_limit(server: FaultServer, tmp_path: Path):
    rows = [(f"c{i}", f"/good/c{i}?delay=0.15") for i in range(10)]
    cfg = FAST.model_copy(update={"per_host_connections": 2})
    download_images(_manifest(server, rows), tmp_path / "o", workers=8, config=cfg, progress=False)
    assert server.max_inflight == 2
    assert summarize_ledger(tmp_path / "o").ok == 10


def test_resize_short_side(server: FaultServer, tmp_path: Path):
    rows = [
        ("landscape", "/good/r1?w=300&h=200"),
        ("portrait", "/good/r2?w=120&h=360"),
        ("small", "/good/r3?w=48&h=32"),
        ("png", "/png/r4?w=200&h=100"),
    ]
    out = tmp_path / "out"
    download_images(_manifest(server, rows), out, resize_short_side=64, config=FAST, progress=False)
    ledger = _ledger(out)
    sizes = {}
    for _, meta, member, data in _shard_samples(out):
        assert member.endswith(".jpg")
        assert hashlib.sha256(data).hexdigest() == ledger[meta["image_id"]]["sha256"]
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG"
            sizes[meta["image_id"]] = im.size
    assert sizes == {
        "landscape": (96, 64),
        "portrait": (64, 192),
        "small": (48, 32),
        "png": (128, 64),
    }
    # an already-small JPEG is stored as downloaded (no generation loss)
    small = [d for _, m, _, d in _shard_samples(out) if m["image_id"] == "small"][0]
    assert small == image_bytes("r3", "JPEG", (48, 32))
    # the resize setting is part of the job: resuming with another one is refused
    with pytest.raises(ValueError, match="resize_short_side"):
        download_images(_manifest(server, rows), out, resize_short_side=128, progress=False)


# --------------------------------------------------------------------------- reruns


def test_rerun_retries_only_transient_failures(server: FaultServer, tmp_path: Path):
    rows = [
        ("good", "/good/x1"),
        ("gone", "/status/404/x2"),
        ("flaky", "/flaky/x3?fails=1"),
        ("reset", "/reset/x4?fails=1"),
        ("notimg", "/html/x5"),
    ]
    cfg = FAST.model_copy(update={"max_retries": 0})
    out = tmp_path / "out"
    manifest = _manifest(server, rows)
    download_images(manifest, out, config=cfg, progress=False)
    first = _ledger(out)
    assert {i: r["status"] for i, r in first.items()} == {
        "good": "ok",
        "gone": "dead_http",
        "flaky": "transient_http",
        "reset": "transient_connection",
        "notimg": "dead_not_image",
    }
    before = {p: server.count(p) for _, p in rows}
    assert set(before.values()) == {1}

    s2 = download_images(manifest, out, config=cfg, progress=False)
    second = _ledger(out)
    after = {p: server.count(p) for _, p in rows}
    assert after == {**before, "/flaky/x3?fails=1": 2, "/reset/x4?fails=1": 2}
    assert {i: (r["status"], r["attempts"]) for i, r in second.items()} == {
        "good": ("ok", 1),
        "gone": ("dead_http", 1),
        "flaky": ("ok", 2),  # attempts add up across runs
        "reset": ("ok", 2),
        "notimg": ("dead_not_image", 1),
    }
    assert s2.processed == 2 and s2.ok == 3
    assert second["good"] == first["good"]
    ids = sorted(m["image_id"] for _, m, _, _ in _shard_samples(out))
    assert ids == ["flaky", "good", "reset"]

    # nothing left to do: no request at all, same ledger
    n = server.total_requests()
    s3 = download_images(manifest, out, config=cfg, progress=False)
    assert server.total_requests() == n
    assert _ledger(out) == second and s3.processed == 0


def test_retry_dead(server: FaultServer, tmp_path: Path):
    rows = [("revived", "/flaky/d1?fails=1&code=404"), ("good", "/good/d2")]
    out = tmp_path / "out"
    manifest = _manifest(server, rows)
    download_images(manifest, out, config=FAST, progress=False)
    assert _ledger(out)["revived"]["status"] == "dead_http"
    download_images(manifest, out, config=FAST, progress=False)  # dead rows are left alone
    assert server.count("/flaky/d1?fails=1&code=404") == 1
    download_images(manifest, out, config=FAST, retry_dead=True, progress=False)
    ledger = _ledger(out)
    assert (ledger["revived"]["status"], ledger["revived"]["attempts"]) == ("ok", 2)
    assert server.count("/flaky/d1?fails=1&code=404") == 2
    assert server.count("/good/d2") == 1  # ok rows are never fetched again
    assert sorted(m["image_id"] for _, m, _, _ in _shard_samples(out)) == ["good", "revived"]


def test_progress_bar_and_summary_table(server: FaultServer, tmp_path: Path, capsys):
    rows = [("a", "/good/pa"), ("b", "/status/404/pb")]
    summary = download_images(_manifest(server, rows), tmp_path / "o", config=FAST)
    captured = capsys.readouterr()
    assert "download: 1/2 available (50.0%)" in captured.out
    assert "dead_http" in captured.out
    assert "download" in captured.err  # the progress bar
    assert summary.to_dict()["counts"]["dead_http"] == 1
    assert summarize_ledger(tmp_path / "o").to_dict()["counts"] == summary.to_dict()["counts"]
    (tmp_path / "o" / "ledger.parquet").unlink()  # rebuilt from the journal instead
    assert summarize_ledger(tmp_path / "o").to_dict()["counts"] == summary.to_dict()["counts"]


def test_changed_manifest_is_refused(server: FaultServer, tmp_path: Path):
    out = tmp_path / "out"
    download_images(_manifest(server, [("a", "/good/a")]), out, config=FAST, progress=False)
    with pytest.raises(ManifestError, match="different manifest"):
        download_images(_manifest(server, [("a", "/good/b")]), out, progress=False)


def test_second_process_on_same_dir_is_refused(server: FaultServer, tmp_path: Path):
    out = tmp_path / "out"
    (out / "_state").mkdir(parents=True)
    with open(out / "_state" / "lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another download is running"):
            download_images(_manifest(server, [("a", "/good/a")]), out, progress=False)


# --------------------------------------------------------------------------- crash recovery


def test_recovery_from_torn_journal_and_torn_shard(server: FaultServer, tmp_path: Path):
    """Deterministic crash states: a shard renamed but not journaled, a torn journal line,
    and an unfinished shard cut in the middle of a sample."""
    rows = [(f"i{i:02d}", f"/good/t{i}") for i in range(12)] + [("gone", "/status/404/t")]
    manifest = _manifest(server, rows)
    out = tmp_path / "out"
    download_images(manifest, out, workers=1, config=FAST, progress=False)
    full = _ledger(out)
    shards = out / "shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == [
        "shard-00000.tar",
        "shard-00001.tar",
        "shard-00002.tar",
    ]
    journal = out / "_state" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)

    def about(shard):
        return lambda line: f'"{shard}"' in line

    # shard-00001 committed (renamed) but its journal lines never written; shard-00002 was
    # still a .tar.tmp, killed while writing its 3rd sample; the journal ends mid-line.
    kept = [x for x in lines if not about("shard-00001.tar")(x) and not about("shard-00002.tar")(x)]
    journal.write_text("".join(kept) + '{"t": "row", "image_id": "i0')
    tmp = shards / "shard-00002.tar.tmp"
    raw = (shards / "shard-00002.tar").read_bytes()
    (shards / "shard-00002.tar").unlink()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    cut = members[5].offset_data + 10  # inside the 3rd sample's .json member
    tmp.write_bytes(raw[:cut])
    (out / "ledger.parquet").unlink()
    salvaged_ids = {full_id for full_id, r in full.items() if r["shard"] == "shard-00002.tar"}
    assert len(salvaged_ids) == 4

    n_before = server.total_requests()
    order = sorted(salvaged_ids)
    s = download_images(manifest, out, workers=1, config=FAST, progress=False)
    # only the torn 3rd and the never-written 4th sample of shard-00002 are fetched again
    refetched = [p for i, p in rows if server.count(p) == 2]
    assert server.total_requests() - n_before == 2
    assert sorted(refetched) == sorted(dict(rows)[i] for i in order[2:])
    assert s.salvaged == 2
    after = _ledger(out)
    assert {i: r["status"] for i, r in after.items()} == {i: r["status"] for i, r in full.items()}
    assert all(after[i]["sha256"] == full[i]["sha256"] for i in full)
    ids = [m["image_id"] for _, m, _, _ in _shard_samples(out)]
    assert sorted(ids) == sorted(i for i, r in full.items() if r["status"] == "ok")
    assert _leftover_temp_files(out) == []
    assert summarize_ledger(out).to_dict()["counts"] == s.to_dict()["counts"]


def _child_code(manifest: Path, out: Path) -> str:
    return textwrap.dedent(
        f"""
        from pipelines.data.download import DownloadConfig, download_images
        cfg = DownloadConfig(read_timeout=2, max_retries=1, backoff_base=0.01, shard_size=20,
                             trust_env=False, allow_private_hosts=True)
        download_images({str(manifest)!r}, {str(out)!r}, workers=4, config=cfg, progress=False)
        """
    )


def _persisted_ids(out: Path) -> set[str]:
    """image_ids whose bytes are on disk: committed shards + complete samples of .tmp ones."""
    ids = {m["image_id"] for _, m, _, _ in _shard_samples(out)}
    for tmp in (out / "shards").glob("*.tar*"):
        if not tmp.name.endswith(".tmp") and not tmp.name.startswith(".salvage-"):
            continue
        try:
            with open(tmp, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
                for m in tar:
                    if m.name.endswith(".json"):
                        ids.add(json.loads(tar.extractfile(m).read())["image_id"])
        except (tarfile.TarError, OSError, ValueError, EOFError):
            pass
    return ids


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume(tmp_path: Path):
    n = 200
    cfg = DownloadConfig(
        read_timeout=2,
        max_retries=1,
        backoff_base=0.01,
        shard_size=20,
        trust_env=False,
        allow_private_hosts=True,
    )
    with FaultServer() as srv:
        rows = []
        for i in range(n):
            if i % 25 == 7:
                rows.append((f"id{i:03d}", f"/status/404/k{i}"))
            elif i % 25 == 13:
                rows.append((f"id{i:03d}", f"/flaky/k{i}?fails=1&delay=0.02"))
            else:
                rows.append((f"id{i:03d}", f"/good/k{i}?delay=0.02"))
        id_of = {p: i for i, p in rows}
        manifest = tmp_path / "manifest.csv"
        _manifest(srv, rows).write_csv(manifest)
        out = tmp_path / "out"
        shard_dir = out / "shards"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def n_final() -> int:
            return len(list(shard_dir.glob("shard-*.tar"))) if shard_dir.exists() else 0

        # kill after the first shard commit, then again right after the restarted run's first
        # commit (its salvage of the first run's unfinished shard), then let a run finish
        for round_ in range(2):
            start = n_final()
            proc = subprocess.Popen(
                [sys.executable, "-c", _child_code(manifest, out)], cwd=ROOT, env=env
            )
            deadline = time.monotonic() + 60
            while n_final() <= start:
                assert proc.poll() is None, "child finished before it could be killed"
                assert time.monotonic() < deadline, "no shard committed in time"
                time.sleep(0.005)
            time.sleep(0.03 * round_)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        assert not (out / "ledger.parquet").exists()
        on_disk = _persisted_ids(out)
        assert 20 <= len(on_disk) < n - 16  # killed mid-run, with work left to do
        time.sleep(0.2)  # let the server finish answering the dead child
        before = list(srv.hits)
        srv.reset_log()
        summary = download_images(manifest, out, workers=4, config=cfg, progress=False)
        final = list(srv.hits)

    ledger = _ledger(out)
    assert set(ledger) == set(id_of.values())
    expected = {i: ("dead_http" if "/status/404/" in p else "ok") for i, p in rows}
    assert {i: r["status"] for i, r in ledger.items()} == expected
    samples = _shard_samples(out)
    ids = [m["image_id"] for _, m, _, _ in samples]
    assert sorted(ids) == sorted(i for i, s in expected.items() if s == "ok")  # each once
    for shard, meta, _, data in samples:
        assert ledger[meta["image_id"]]["shard"] == shard
        assert hashlib.sha256(data).hexdigest() == ledger[meta["image_id"]]["sha256"]
    assert _leftover_temp_files(out) == []
    assert summary.total == n and summary.ok == sum(s == "ok" for s in expected.values())

    # nothing already on disk was requested again
    refetched = {id_of[h.path] for h in final}
    assert not (refetched & on_disk), sorted(refetched & on_disk)
    # a URL answered 200 twice can only be one that was in flight when a kill landed
    ok_count = Counter(h.path for h in before + final if h.status == 200)
    twice = {p for p, c in ok_count.items() if c > 1}
    assert len(twice) <= 2 * 4, twice  # <= `workers` rows in flight per kill


# --------------------------------------------------------------------------- manifest


def test_manifest_validation_reports_every_problem_once(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "image_id,url,md5\n"
        "a,http://x/a.jpg,\n"
        "b,,\n"
        "a,http://x/a2.jpg,\n"
        ",http://x/c.jpg,\n"
        "d,http://x/d.jpg,nothex\n"
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "empty url: row 2 (line 3)" in msg
    assert "'a' at row 1 and row 3" in msg
    assert "empty image_id: row 4 (line 5)" in msg
    assert "md5" in msg and "row 5 (line 6)" in msg
    assert "drop" in msg  # says what to do

    missing = tmp_path / "missing.csv"
    missing.write_text("ImageID,OriginalURL\nx,http://x\n")
    with pytest.raises(ManifestError, match=r"missing required column.*rename ImageID"):
        load_manifest(missing)
    with pytest.raises(ManifestError, match="unknown file type"):
        (tmp_path / "m.json").write_text("{}")
        load_manifest(tmp_path / "m.json")


def test_manifest_parquet_and_md5_forms(tmp_path: Path):
    digest = hashlib.md5(b"x").digest()
    df = pl.DataFrame(
        {
            "image_id": [1, 2, 3],
            "url": [" http://h/1 ", "http://h/2", "http://h/3"],
            "md5": [digest.hex(), base64.b64encode(digest).decode(), None],
        }
    )
    df.write_parquet(tmp_path / "m.parquet")
    loaded = load_manifest(tmp_path / "m.parquet")
    assert loaded["image_id"].to_list() == ["1", "2", "3"]
    assert loaded["url"].to_list()[0] == "http://h/1"


def test_keys_are_safe_unique_and_stable():
    ids = ["a/b", "a_b", "x.jpg", "../../etc/passwd", "é", "ok"]
    keys = make_keys(ids)
    assert len(set(keys)) == len(keys)
    assert keys[2] == "x_jpg" and keys[5] == "ok"
    assert all("/" not in k and "." not in k and k for k in keys)
    assert make_keys(list(reversed(ids))) == list(reversed(keys))  # order-independent


# --------------------------------------------------------------------------- retry policy


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after("-5", now=now) == 0.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 30))
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after():
    import random

    cfg = DownloadConfig(backoff_base=1.0, backoff_max=10.0, jitter=0.5, retry_after_max=30.0)
    rng = random.Random(0)
    for attempt, top in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        for _ in range(50):
            d = backoff_delay(attempt, cfg, None, rng)
            assert top * 0.5 <= d <= top
    assert backoff_delay(1, cfg, 20.0, rng) == 20.0  # Retry-After wins over a shorter backoff
    assert backoff_delay(1, cfg, 3600.0, rng) == 30.0  # ... but is capped
    flat = cfg.model_copy(update={"jitter": 0.0})
    assert backoff_delay(3, flat, None, rng) == 4.0
