"""Stage kind ``corpus``: ``<data>/corpora/<dataset>/<name>/``, an LLM text corpus
(pipelines/text), for every (dataset, corpus) a cell reads or ``corpora.<name>.datasets``
names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import TEXT_CODE, Need, Stage, rel

KIND = "corpus"


def request(params: Any, need: Need) -> None:
    for name, corpus in params.corpora.items():  # corpora asked for by name
        for ds in corpus.datasets:
            if ds not in params.datasets:
                raise ValueError(f"corpora.{name}.datasets: unknown dataset {ds!r}")
            need(KIND, ds, name)


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    ds, name = key
    released = getattr(params.corpora[name], "released", None)  # a file read, not asked
    return Stage(
        KIND,
        key,
        (need("dataset", ds),),
        rel(params, "data", "corpora", ds, name),
        (f"corpora.{name}",),
        TEXT_CODE,
        (released,) if released else (),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.text.corpora import build_corpus

    return build_corpus(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        return {}
    from pipelines.text import dagster_metadata

    return dagster_metadata(folder, lambda text: {"type": "md", "value": text})
