"""Image sources: toyworld arrays, image folders, and the downloader's shards."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
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

    from pipelines.data.download import download_images

    with FaultServer() as srv:
        manifest = pl.DataFrame(
            {
                "image_id": ["p/1.jpg", "p/2.jpg", "q/3.jpg"],
                "url": [srv.url("/good/one"), srv.url("/status/404/two"), srv.url("/good/three")],
            }
        )
        download_images(manifest, tmp_path / "dl", workers=2, progress=False)
    src = open_images(
        tmp_path, "test", np.array(["p/1.jpg", "p/2.jpg", "q/3.jpg"]), str(tmp_path / "dl")
    )
    assert isinstance(src, ShardImages)
    assert src.available().tolist() == [True, False, True]
    out = src.get([0, 2], 24)
    assert out.shape == (2, 24, 24, 3) and out.std() > 0
    with pytest.raises(MissingImageError, match="p/2.jpg"):
        src.get([1], 24)
