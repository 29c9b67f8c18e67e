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
    overwrite: Annotated[
        bool,
        typer.Option(
            help="--out may hold other files: replace the prepare's own files, keep the rest"
        ),
    ] = False,
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
        ds = prepare_dataset(dataset, release, out, overwrite=overwrite, **options)
    except (ParseError, OSError, ValueError, TypeError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
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
    max_bytes: Annotated[
        int | None, typer.Option(help="body size cap per image, in bytes (at least 1024)")
    ] = None,
    allow_private_hosts: Annotated[
        bool,
        typer.Option(
            help="also fetch from loopback, private and link-local addresses (refused by "
            "default: a manifest could otherwise reach services inside your network)"
        ),
    ] = False,
) -> None:
    """Download a manifest's images into webdataset shards with a per-row ledger (resumable)."""
    from pydantic import ValidationError

    from pipelines.data.download import DownloadConfig, ManifestError, download_images

    if out.exists() and not out.is_dir():
        console.print(f"[red]error:[/red] --out {out} is a file: give a folder", highlight=False)
        raise typer.Exit(2)
    settings: dict[str, object] = {"allow_private_hosts": allow_private_hosts}
    if max_bytes is not None:
        settings["max_body_bytes"] = max_bytes
    try:
        config = DownloadConfig(**settings)
    except ValidationError as err:
        first = err.errors()[0]
        name = {"max_body_bytes": "--max-bytes"}.get(str(first["loc"][0]), str(first["loc"][0]))
        console.print(f"[red]error:[/red] {name}: {first['msg']}", highlight=False)
        raise typer.Exit(2) from None
    try:
        summary = download_images(
            manifest,
            out,
            workers=workers,
            resize_short_side=resize,
            config=config,
            retry_dead=retry_dead,
        )
    except (ManifestError, OSError, ValueError) as err:
        from pipelines.redact import redact

        console.print(f"[red]error:[/red] {redact(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    del summary  # download_images printed the summary table and wrote summary.json
