"""Typed params of the text corpora (params.yaml ``corpora:``), one entry per corpus.

A corpus is named in params.yaml (``corpora.<name>``); its ``kind`` says what it holds
(``comc-sentences``, ``class-descriptions``, ``category-relations``) and ``provider``
which LLM writes it. Methods name the corpora they read (see pipelines/text/__init__.py);
the graph builds ``corpus@<dataset>@<name>`` for every (dataset, corpus) a cell needs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CorpusKind = Literal["comc-sentences", "class-descriptions", "category-relations"]
CORPUS_KINDS: tuple[str, ...] = ("comc-sentences", "class-descriptions", "category-relations")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    """Who answers the prompts.

    ``offline`` (default): a deterministic stand-in for an LLM that answers from the
    dataset's knowledge (``knowledge.json`` + ``cooccurrence.npz``) or WordNet.
    ``openai``: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server,
    chatglm.cpp) through the ``openai`` package. The API key is read from the
    environment variable *named* by ``api_key_env``; it is never logged or stored.

    ``api`` is the route: ``chat`` (``/v1/chat/completions``), ``completions``
    (``/v1/completions``: the prompt as plain text, for completions-only models such as
    ``davinci-002``, ``babbage-002``, ``gpt-3.5-turbo-instruct`` or a served base model),
    or ``auto``: completions for those OpenAI model families, chat otherwise.
    ``token_limit`` names the length limit sent on the chat route: ``max_tokens``,
    ``max_completion_tokens`` (OpenAI's reasoning models, the o-series and gpt-5, refuse
    ``max_tokens``), or ``auto``: by model family, switching for the rest of the run when
    a server answers that it wants the other one.
    """

    kind: Literal["offline", "openai"] = "offline"
    model: str = "offline-knowledge"
    base_url: str | None = None  # openai: None = api.openai.com (or $OPENAI_BASE_URL)
    api_key_env: str = "OPENAI_API_KEY"
    api: Literal["auto", "chat", "completions"] = "auto"
    token_limit: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    max_tokens: Annotated[int, Field(gt=0)] = 512
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_retries: Annotated[int, Field(ge=0)] = 6  # per request: 429 / 5xx / timeout / bad JSON
    backoff_s: Annotated[float, Field(ge=0)] = 1.0  # first retry delay, doubled each time
    max_backoff_s: Annotated[float, Field(ge=0)] = 60.0  # also caps a server's Retry-After
    concurrency: Annotated[int, Field(gt=0, le=256)] = 8
    usd_per_1k_prompt_tokens: Annotated[float, Field(ge=0)] = 0.0
    usd_per_1k_completion_tokens: Annotated[float, Field(ge=0)] = 0.0

    @property
    def label(self) -> str:
        """``provider:model`` as recorded in metadata (never the key)."""
        return f"{self.kind}:{self.model}"


class _CorpusBase(_Strict):
    provider: ProviderConfig = ProviderConfig()
    seed: int = 0
    reask: Annotated[int, Field(ge=0)] = 3  # an answer that does not parse is re-asked N times
    datasets: list[str] = []  # build for these even when no cell reads the corpus
    description: str = ""


class ComcSentencesConfig(_CorpusBase):
    """CoMC §3.1: "Please make a brief sentence to describe a photo that contains {labels}",
    with 1–5 labels drawn at random per sentence (the paper does not say how many)."""

    kind: Literal["comc-sentences"] = "comc-sentences"
    n_sentences: Annotated[int, Field(gt=0)] = 40000
    min_labels: Annotated[int, Field(ge=1)] = 1
    max_labels: Annotated[int, Field(ge=1)] = 5

    @model_validator(mode="after")
    def _range(self) -> ComcSentencesConfig:
        if self.max_labels < self.min_labels:
            raise ValueError("max_labels must be >= min_labels")
        return self


class ClassDescriptionsConfig(_CorpusBase):
    """RCNn: per class, visual attributes, its hierarchy ("a X, which is a Y") and the
    scenes / objects it co-occurs with, each asked for in one prompt; every subclass x
    superclass pair becomes a chain ("a C, which is a X, which is a P").

    The default counts are the per-class means of the authors' released GPT-4o-mini
    corpus (RCNn repository ``redefine_classname/mscoco_post_llm.json`` =
    ../shared/data/coco/rcnn_llm_descriptions_65.json: 39 attributes, 15.4 subclasses,
    4.7 superclasses, 72.5 chains, 18.4 scenes, 152 sentences per class), so that CLIP's
    80 templates, which RCNn adds per class, are ~34% of the MSE samples as there.

    ``released``: read a released corpus file instead of asking a provider
    (``{"<id>": {"node_name": ..., "candidate_sentences": [...]}}``, the reference's
    format); a path relative to the params file. The counts and the provider then do not
    apply.
    """

    kind: Literal["class-descriptions"] = "class-descriptions"
    n_attributes: Annotated[int, Field(ge=0)] = 40
    n_subclasses: Annotated[int, Field(ge=0)] = 15
    n_superclasses: Annotated[int, Field(ge=0)] = 5
    n_scenes: Annotated[int, Field(ge=0)] = 20
    released: str | None = None

    @model_validator(mode="after")
    def _released_alone(self) -> ClassDescriptionsConfig:
        if self.released is not None and self.provider != ProviderConfig():
            raise ValueError(
                "released: a released corpus is read, not asked for; remove `provider`"
            )
        return self


class CategoryRelationsConfig(_CorpusBase):
    """C2SRT supplementary B.3: for each category, the related *seen* categories with a
    relationship type and a strength High/Medium/Low (3/2/1; unlisted = 0), averaged
    over ``n_queries`` queries; the ``top_k`` best become the category's in-edges.

    Every query shows the LLM every seen category (B.3 gives it "the list of seen
    categories"). ``max_seen_in_prompt`` caps how many one prompt lists: a longer list
    (Open Images: 7,186 seen labels) is shuffled per (category, query) and split into
    pages of at most that many, one prompt each, so the LLM still judges every pair, and a
    pair's score is the mean over the queries whose page listed it. ``null``: one prompt
    with the whole list, whatever its length."""

    kind: Literal["category-relations"] = "category-relations"
    n_queries: Annotated[int, Field(ge=1)] = 3
    top_k: Annotated[int, Field(ge=1)] = 8
    max_seen_in_prompt: Annotated[int, Field(ge=1)] | None = None


CorpusConfig = Annotated[
    ComcSentencesConfig | ClassDescriptionsConfig | CategoryRelationsConfig,
    Field(discriminator="kind"),
]


def cell_corpora(params, variant: str) -> dict[str, str]:
    """{kind: corpus name} a variant's method may read (checked against params ``corpora:``).

    Computed without importing the method (:func:`pipelines.config.method_corpora`), so
    the graph, and Dagster's definitions, stay free of torch."""
    from pipelines.config_core import method_corpora, split_seed

    var = params.variants[split_seed(variant)[0]]
    declared = method_corpora(var.method)
    if not declared:
        return {}
    chosen = var.options.get("corpus")
    wanted = {
        kind: str(chosen) if chosen is not None and len(declared) == 1 else default
        for kind, default in declared.items()
    }
    for kind, name in wanted.items():
        require_corpus(params, variant, name, kind, f", but {var.method} reads it as {kind}")
    return wanted


def require_corpus(params, variant: str, name: str, kind: str, mismatch: str) -> None:
    """ConfigError unless corpus ``name`` is declared under ``corpora:`` with ``kind``;
    ``mismatch`` ends the message when the kind differs (who reads it, as what)."""
    from pipelines.config_core import ConfigError

    if name not in params.corpora:
        raise ConfigError(
            f"variants.{variant}: corpus {name!r} is not declared under `corpora:` "
            f"(known: {sorted(params.corpora)})"
        )
    if params.corpora[name].kind != kind:
        raise ConfigError(
            f"variants.{variant}: corpus {name!r} is a {params.corpora[name].kind} corpus"
            + mismatch
        )
