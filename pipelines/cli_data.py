"""`ovml data ...`: prepare official releases and download images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.data import REAL_DATASETS

data_app = typer.Typer(
    no_args_is_help=True, help="Prepare official dataset releases; download images."
)
console = Console(stderr=True)


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise typer.BadParameter(f"{text!r}: use KEY=VALUE (VALUE parsed as JSON when it can be)")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


@data_app.command()
def prepare(
    dataset: Annotated[str, typer.Argument(help=f"one of: {', '.join(REAL_DATASETS)}")],
    release: Annotated[
        Path, typer.Option("--release", help="the official release folder, as shipped")
    ],
    out: Annotated[Path, typer.Option("--out", help="where the prepared dataset goes")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="module option KEY=VALUE")
    ] = None,
) -> None:
    """Parse an official release into the prepared-dataset contract (labels, splits, manifest)."""
    from pipelines.data import prepare_dataset
    from pipelines.data.splits import ParseError

    if dataset not in REAL_DATASETS:
        console.print(
            f"[red]error:[/red] unknown dataset {dataset!r} (known: {', '.join(REAL_DATASETS)})"
        )
        raise typer.Exit(2)
    options = dict(_parse_option(o) for o in option or [])
    try:
        ds = prepare_dataset(dataset, release, out, **options)
    except (ParseError, FileNotFoundError, ValueError, TypeError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(1) from None
    counts = {s: len(sp.image_ids) for s, sp in ds.splits.items()}
    console.print(
        f"[green]prepared[/green] {dataset} → {out}: {ds.label_space.n_seen} seen / "
        f"{ds.label_space.n_unseen} unseen labels, images per split {counts}"
    )


@data_app.command()
def download(
    manifest: Annotated[
        Path, typer.Option("--manifest", help="CSV or parquet: image_id, url[, md5]")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="output folder (shards/, ledger.parquet, summary.json)")
    ],
    workers: Annotated[int, typer.Option(help="concurrent requests")] = 16,
    resize: Annotated[
        int | None, typer.Option(help="re-encode with this short side (never upscales)")
    ] = None,
    retry_dead: Annotated[
        bool, typer.Option(help="also retry rows that were dead last time")
    ] = False,
    max_bytes: Annotated[int | None, typer.Option(help="body size cap per image")] = None,
) -> None:
    """Download a manifest's images into webdataset shards with a per-row ledger (resumable)."""
    from pipelines.data.download import DownloadConfig, ManifestError, download_images

    config = DownloadConfig(**({"max_body_bytes": max_bytes} if max_bytes else {}))
    try:
        summary = download_images(
            manifest,
            out,
            workers=workers,
            resize_short_side=resize,
            config=config,
            retry_dead=retry_dead,
        )
    except (ManifestError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(1) from None
    del summary  # download_images printed the summary table and wrote summary.json
