"""Image sources: toyworld arrays, image folders, and the downloader's shards."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from pipelines.data.images import FolderImages, MissingImageError, ShardImages, open_images


def test_folder_images_resize_crop_and_refuse_escapes(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (80, 40), (255, 0, 0)).save(tmp_path / "a" / "x.jpg")
    src = FolderImages(tmp_path, np.array(["a/x.jpg", "../etc/passwd"]))
    out = src.get([0], 32)
    assert out.shape == (1, 32, 32, 3) and abs(int(out[0, 16, 16, 0]) - 255) < 10
    with pytest.raises(ValueError, match="escapes"):
        src.get([1], 32)


def test_shard_images_read_what_the_downloader_wrote(tmp_path):
    from fault_server import FaultServer

    from pipelines.data.download import DownloadConfig, download_images

    with FaultServer() as srv:
        manifest = pl.DataFrame(
            {
                "image_id": ["p/1.jpg", "p/2.jpg", "q/3.jpg"],
                "url": [srv.url("/good/one"), srv.url("/status/404/two"), srv.url("/good/three")],
            }
        )
        download_images(
            manifest,
            tmp_path / "dl",
            workers=2,
            config=DownloadConfig(allow_private_hosts=True),
            progress=False,
        )
    src = open_images(
        tmp_path, "test", np.array(["p/1.jpg", "p/2.jpg", "q/3.jpg"]), str(tmp_path / "dl")
    )
    assert isinstance(src, ShardImages)
    assert src.available().tolist() == [True, False, True]
    out = src.get([0, 2], 24)
    assert out.shape == (2, 24, 24, 3) and out.std() > 0
    with pytest.raises(MissingImageError, match="p/2.jpg"):
        src.get([1], 24)


def test_download_stage_chunks_feed_features_and_cells(tmp_path, tiny_params_dict):
    """A real-dataset path end to end: prepared manifest -> chunked download stage ->
    features of the images that exist -> a cell evaluated on those images only."""
    from fault_server import FaultServer

    from pipelines.config import load_params
    from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
    from pipelines.graph import build_graph
    from pipelines.runner import run_stage, run_stages
    from tests.conftest import write_params

    with FaultServer() as srv:
        ids = [f"img/{i}.jpg" for i in range(12)]
        urls = [srv.url(f"/good/{i}") if i % 4 else srv.url(f"/status/404/{i}") for i in range(12)]
        rng = np.random.default_rng(0)
        labels = rng.choice(np.array([-1, 1], dtype=np.int8), size=(12, 3))
        space = LabelSpace([Label("a", "red"), Label("b", "blue")], [Label("c", "green")])
        train_labels = labels.copy()
        train_labels[:, 2] = 0
        data = tmp_path / "data"
        PreparedDataset(
            "mini",
            space,
            {"train": Split(np.array(ids), train_labels), "test": Split(np.array(ids), labels)},
            manifest=pl.DataFrame(
                {"image_id": ids, "url": urls, "md5": [None] * 12, "split": ["test"] * 12}
            ),
        ).save(data / "mini")
        tiny_params_dict["datasets"]["mini"] = {
            "source": "coco-zsl",
            "backbone": "rand",
            "release_dir": str(tmp_path / "unused"),
            "download": {"chunks": 3, "workers": 2, "allow_private_hosts": True},
            "eval": {"top_k": [1]},
        }
        tiny_params_dict["backbones"]["rand"] = {"model": "ovml-tiny-vit", "weights": "none"}
        tiny_params_dict["tables"]["mini"] = {
            "title": "mini",
            "datasets": ["mini"],
            "rows": ["clip_zeroshot"],
        }
        tiny_params_dict["tracking"] = {"enabled": False}
        params = load_params(write_params(tmp_path, tiny_params_dict))
        graph = build_graph(params)
        assert graph["features@mini@rand"].deps == ("dataset@mini", "images@mini")
        # the dataset was prepared above (no release here): mark it fresh, run the rest
        from pipelines.graph import write_stamp

        write_stamp(params, graph, "dataset@mini")
        ran = run_stages(
            params, ["cell@mini@clip_zeroshot"], lambda p, st: run_stage(p, st, progress=False)
        )
    assert ran == ["images@mini", "features@mini@rand", "cell@mini@clip_zeroshot"]
    chunks = sorted((data / "mini-images").glob("chunk-*/ledger.parquet"))
    assert len(chunks) == 3
    summary = json.loads((data / "mini-images" / "summary.json").read_text())
    assert json.loads((data / "mini-images.summary.json").read_text()) == summary
    from pipelines.graph import dvc_yaml

    stage = yaml.safe_load(dvc_yaml(params))["stages"]["images__mini"]
    assert stage["metrics"] == [{"data/mini-images.summary.json": {"cache": False}}]
    assert {k: v for k, v in summary["counts"].items() if v} == {"ok": 9, "dead_http": 3}
    metrics = json.loads((tmp_path / "results/cells/mini/clip_zeroshot/metrics.json").read_text())
    assert (
        metrics["meta"]["n_test_images"] == 9 and metrics["meta"]["counts"]["gzsl"]["images"] == 9
    )
    # the transform that made the features (coco-zsl's default: RCNn's bilinear squash) is
    # recorded in the cache's index and in the cell's metrics
    made = {"mode": "squash", "size": 64, "crop_pct": 1.0, "interpolation": "bilinear"}
    index = json.loads((tmp_path / "features/mini/rand/test/index.json").read_text())
    assert index["transform"] == made and metrics["meta"]["image_transform"] == made


def test_dagster_download_asset_is_partitioned_by_chunk_with_retries(tmp_path, tiny_params_dict):
    from dagster_project.assets import build_assets
    from pipelines.config import load_params
    from tests.conftest import write_params

    tiny_params_dict["datasets"]["mini"] = {
        "source": "nus-wide",
        "backbone": "toy-clip",
        "release_dir": "release",
        "download": {"chunks": 4},
    }
    tiny_params_dict["tables"]["mini"] = {"title": "mini", "datasets": ["mini"], "rows": ["random"]}
    params = load_params(write_params(tmp_path, tiny_params_dict))
    images = next(a for a in build_assets(params) if a.key.path == ["images", "mini"])
    assert images.partitions_def.get_partition_keys() == ["0000", "0001", "0002", "0003"]
    policy = images.op.retry_policy
    assert policy is not None and policy.max_retries == 3
