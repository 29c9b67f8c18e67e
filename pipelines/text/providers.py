"""Providers: who answers a batch of chat requests.

- :class:`OfflineProvider`: the deterministic knowledge-based stand-in (offline.py).
- :class:`OpenAIProvider`: any OpenAI-compatible endpoint through the ``openai`` package,
  with a concurrency limit, a timeout, and retries with exponential backoff on 429s, 5xx,
  timeouts, dropped connections and bodies that are not the JSON the API promises.
  Faults are counted (``faults``); tokens and cost are accounted by the corpus builder
  from each completion's usage.

Routes and parameters (``ProviderConfig.api``, ``token_limit``): chat models answer
``/v1/chat/completions``; completions-only models (``davinci-002``, ``babbage-002``,
``gpt-3.5-turbo-instruct``, a served base model) answer ``/v1/completions``, which gets the
prompt as plain text (:meth:`ChatRequest.as_prompt`). OpenAI's reasoning models (o1, o3,
o4-mini, gpt-5...) refuse ``max_tokens`` and take ``max_completion_tokens``; a server that
says so in a 400 is answered with the other parameter for the rest of the run. A chat
request that a server refuses as "not a chat model" is an error that names the fix
(``api: completions``): the route is part of the cache key, so it is not switched mid-run.

Retry-After (429 and 503, seconds or an HTTP date; ``retry-after-ms`` too) is honoured,
capped by ``max_backoff_s``. A 429 whose error code is ``insufficient_quota`` is final: the
account has no credit, and retrying only burns the retries. Each reply's ``model`` is kept
with its completion (``Completion.model``); the corpus builder counts the replies whose
model is not the one asked for.

The API key is read from the environment variable named in params and handed to the
client; it is never logged, stored or put into metadata or MLflow.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from pipelines.text.cache import ChatRequest, Completion
from pipelines.text.config import ProviderConfig
from pipelines.text.knowledge import Knowledge

log = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://api.openai.com/v1"
# OpenAI models served only on /v1/completions (GPT-3 base models and the instruct model
# that replaced text-davinci-002/003; the retired text-* names for old endpoints)
COMPLETIONS_ONLY = re.compile(
    r"^(davinci-002|babbage-002|gpt-3\.5-turbo-instruct(-\d+)?|text-(davinci|curie|babbage|ada)-\d+)$"
)
# OpenAI reasoning models: max_completion_tokens, not max_tokens
REASONING = re.compile(r"^(o\d+(-[\w.-]+)?|gpt-5([\w.-]*)?)$")


class ProviderError(RuntimeError):
    """An endpoint that cannot serve this corpus (refused, unknown model, no key...)."""


def approx_tokens(text: str) -> int:
    """Token count the offline provider reports (whitespace words x 4/3, as BPE averages)."""
    return max(1, round(len(text.split()) * 4 / 3))


class OfflineProvider:
    def __init__(self, config: ProviderConfig, knowledge: Knowledge):
        from pipelines.text.offline import VERSION, OfflineLLM

        self.config = config
        self.llm = OfflineLLM(knowledge)
        # the response-cache key's model: a new version of the offline answers is asked again
        self.cache_model = f"{config.model}@v{VERSION}"
        self.faults: Counter[str] = Counter()

    endpoint: str | None = None
    route = "chat"

    def complete(self, request: ChatRequest) -> Completion:
        msgs = request.as_messages()
        text = self.llm.answer(msgs, request.temperature, request.seed)
        prompt = " ".join(m["content"] for m in msgs)
        return Completion(text, approx_tokens(prompt), approx_tokens(text))

    def complete_many(
        self, requests: Iterable[tuple[str, ChatRequest]]
    ) -> Iterator[tuple[str, Completion]]:
        for key, req in requests:
            yield key, self.complete(req)


def retry_after_seconds(headers, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def endpoint_of(base_url: str | None) -> str | None:
    """The endpoint part of a cache key: None for OpenAI's own API (the key it always
    had), else the base URL without a trailing slash."""
    if base_url is None:
        return None
    url = str(base_url).rstrip("/")
    return None if url == DEFAULT_ENDPOINT else url


def resolve_route(config: ProviderConfig) -> str:
    if config.api != "auto":
        return config.api
    return "completions" if COMPLETIONS_ONLY.match(config.model) else "chat"


def resolve_token_limit(config: ProviderConfig) -> str:
    if config.token_limit != "auto":
        return config.token_limit
    return "max_completion_tokens" if REASONING.match(config.model) else "max_tokens"


class OpenAIProvider:
    def __init__(self, config: ProviderConfig, *, sleep: Callable[[float], None] = time.sleep):
        import openai

        key = os.environ.get(config.api_key_env)
        if not key:
            raise ProviderError(
                f"environment variable {config.api_key_env} is not set: put the API key for "
                f"{config.base_url or 'api.openai.com'} in it (local servers accept any value)"
            )
        self.config = config
        self.client = openai.OpenAI(
            api_key=key, base_url=config.base_url, timeout=config.timeout_s, max_retries=0
        )
        del key
        # the URL the client really calls ($OPENAI_BASE_URL when base_url is unset)
        self.endpoint = endpoint_of(str(self.client.base_url))
        self.route = resolve_route(config)
        self.token_limit = resolve_token_limit(config)
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sleep = sleep

    @property
    def where(self) -> str:
        return self.config.base_url or self.endpoint or "api.openai.com"

    def _count(self, what: str) -> None:
        with self._lock:
            self.faults[what] += 1

    def _call(self, request: ChatRequest, limit: str) -> Completion:
        """One request on this provider's route (``limit``: the chat route's length
        parameter); raises what the client raises."""
        cfg = self.config
        if self.route == "completions":
            resp = self.client.completions.create(
                model=cfg.model,
                prompt=request.as_prompt(),
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                seed=request.seed,
            )
            choice = resp.choices[0] if resp.choices else None
            text = choice.text if choice is not None else None
        else:
            resp = self.client.chat.completions.create(
                model=cfg.model,
                messages=request.as_messages(),
                temperature=request.temperature,
                seed=request.seed,
                **{limit: request.max_tokens},
            )
            choice = resp.choices[0] if resp.choices else None
            text = choice.message.content if choice is not None else None
        if not isinstance(text, str):
            raise ValueError("no text in the response")
        usage = resp.usage
        served = getattr(resp, "model", None)
        return Completion(
            text,
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
            served if isinstance(served, str) and served else None,
        )

    def _wants_other_limit(self, err, limit: str) -> bool:
        """A 400 refusing ``limit`` and naming the other length parameter: from now on,
        send the other one (every thread; counted once)."""
        if self.route != "chat":
            return False
        other = "max_tokens" if limit == "max_completion_tokens" else "max_completion_tokens"
        msg = str(getattr(err, "message", "") or err)
        if other not in msg or limit not in msg:
            return False
        with self._lock:
            if self.token_limit == limit:
                log.warning("%s wants %s, not %s: switching", self.where, other, limit)
                self.token_limit = other
                self.faults["token_limit_switched"] += 1
        return True

    def complete(self, request: ChatRequest) -> Completion:
        import openai

        cfg = self.config
        delay = cfg.backoff_s
        switched = False
        attempt = 0
        while True:
            wait_s: float | None = None
            limit = self.token_limit
            try:
                return self._call(request, limit)
            except openai.AuthenticationError:
                raise ProviderError(
                    f"{self.where} refused the API key in ${cfg.api_key_env} (HTTP 401)"
                ) from None
            except openai.NotFoundError as err:
                if "not a chat model" in str(err.message).lower():
                    raise ProviderError(
                        f"{self.where}: {cfg.model!r} is not a chat model (HTTP 404); set "
                        "`api: completions` in the corpus's provider"
                    ) from None
                raise ProviderError(
                    f"{self.where} does not serve model {cfg.model!r} on /v1/"
                    f"{'chat/completions' if self.route == 'chat' else 'completions'} "
                    f"(HTTP 404){self._models()}"
                ) from None
            except openai.RateLimitError as err:
                if "insufficient_quota" in (str(err.code), str(err.type)):
                    raise ProviderError(
                        f"{self.where}: the account behind ${cfg.api_key_env} has no quota "
                        "left (HTTP 429 insufficient_quota); add credit or use another key "
                        "(not retried: waiting does not refill it)"
                    ) from None
                self._count("rate_limited")
                wait_s = retry_after_seconds(err.response.headers)
            except openai.APITimeoutError:
                self._count("timeout")
            except openai.APIConnectionError as err:
                self._count("connection")
                if attempt == cfg.max_retries:
                    raise ProviderError(
                        f"{self.where}: cannot connect ({err.__cause__ or err}); is the server up?"
                    ) from None
            except openai.InternalServerError as err:
                self._count("server_error")
                if err.status_code == 503:
                    wait_s = retry_after_seconds(err.response.headers)
            except openai.APIStatusError as err:
                if err.status_code == 400 and not switched and self._wants_other_limit(err, limit):
                    switched = True
                    continue  # the same attempt, with the parameter the server asked for
                if err.status_code >= 500:
                    self._count("server_error")
                else:
                    hint = (
                        "; a model without a chat template answers on `api: completions`"
                        if self.route == "chat" and "chat template" in str(err.message).lower()
                        else ""
                    )
                    raise ProviderError(
                        f"{self.where} rejected the request (HTTP {err.status_code}): "
                        f"{str(err.message)[:200]}{hint}"
                    ) from None
            except (openai.APIResponseValidationError, ValueError, AttributeError, IndexError):
                self._count("malformed")
            if attempt == cfg.max_retries:
                break
            self._count("retries")
            if wait_s is not None:  # the server's own delay, within our cap
                pause = min(cfg.max_backoff_s, wait_s)
            else:
                pause = min(cfg.max_backoff_s, delay) * random.uniform(0.5, 1.0)
            self._sleep(pause)
            delay *= 2
            attempt += 1
        raise ProviderError(
            f"{self.where}: no valid answer after {cfg.max_retries + 1} attempts "
            f"(faults so far: {dict(self.faults)})"
        )

    def _models(self) -> str:
        try:
            names = [m.id for m in self.client.models.list()][:10]
        except Exception:  # noqa: BLE001 - only a hint for the error message
            return ""
        return f"; it serves: {', '.join(names)}" if names else ""

    def complete_many(
        self, requests: Iterable[tuple[str, ChatRequest]]
    ) -> Iterator[tuple[str, Completion]]:
        """Yield (key, completion) as answers arrive, at most ``concurrency`` in flight.
        On a fatal error the requests not yet started are cancelled; answers already
        yielded are the caller's to keep (the cache)."""
        todo = iter(requests)
        limit = self.config.concurrency
        with ThreadPoolExecutor(max_workers=limit) as pool:
            running = {}
            try:
                for key, req in todo:
                    running[pool.submit(self.complete, req)] = key
                    if len(running) >= limit:
                        break
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        key = running.pop(fut)
                        yield key, fut.result()
                        nxt = next(todo, None)
                        if nxt is not None:
                            running[pool.submit(self.complete, nxt[1])] = nxt[0]
            finally:
                for fut in running:
                    fut.cancel()


def make_provider(config: ProviderConfig, knowledge: Knowledge):
    if config.kind == "offline":
        return OfflineProvider(config, knowledge)
    return OpenAIProvider(config)
