"""Providers: who answers a batch of chat requests.

- :class:`OfflineProvider`: the deterministic knowledge-based stand-in (offline.py).
- :class:`OpenAIProvider`: any OpenAI-compatible chat-completions endpoint through the
  ``openai`` package, with a concurrency limit, a timeout, and retries with exponential
  backoff that honour Retry-After, on 429s, 5xx, timeouts, dropped connections and bodies
  that are not the JSON the API promises. Faults are counted (``faults``); tokens and
  cost are accounted by the corpus builder from each completion's usage.

The API key is read from the environment variable named in params and handed to the
client; it is never logged, stored or put into metadata or MLflow.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from pipelines.text.cache import ChatRequest, Completion
from pipelines.text.config import ProviderConfig
from pipelines.text.knowledge import Knowledge

log = logging.getLogger(__name__)


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
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sleep = sleep

    @property
    def where(self) -> str:
        return self.config.base_url or "api.openai.com"

    def _count(self, what: str) -> None:
        with self._lock:
            self.faults[what] += 1

    def complete(self, request: ChatRequest) -> Completion:
        import openai

        cfg = self.config
        delay = cfg.backoff_s
        for attempt in range(cfg.max_retries + 1):
            wait_s: float | None = None
            try:
                resp = self.client.chat.completions.create(
                    model=cfg.model,
                    messages=request.as_messages(),
                    temperature=request.temperature,
                    max_tokens=request.max_tokens,
                    seed=request.seed,
                )
                choice = resp.choices[0] if resp.choices else None
                text = choice.message.content if choice is not None else None
                if not isinstance(text, str):
                    raise ValueError("no message content in the response")
                usage = resp.usage
                return Completion(
                    text,
                    int(getattr(usage, "prompt_tokens", 0) or 0),
                    int(getattr(usage, "completion_tokens", 0) or 0),
                )
            except openai.AuthenticationError:
                raise ProviderError(
                    f"{self.where} refused the API key in ${cfg.api_key_env} (HTTP 401)"
                ) from None
            except openai.NotFoundError:
                raise ProviderError(
                    f"{self.where} does not serve model {cfg.model!r} (HTTP 404){self._models()}"
                ) from None
            except openai.RateLimitError as err:
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
            except openai.InternalServerError:
                self._count("server_error")
            except openai.APIStatusError as err:
                if err.status_code >= 500:
                    self._count("server_error")
                else:
                    raise ProviderError(
                        f"{self.where} rejected the request (HTTP {err.status_code}): "
                        f"{str(err.message)[:200]}"
                    ) from None
            except (openai.APIResponseValidationError, ValueError, AttributeError, IndexError):
                self._count("malformed")
            if attempt == cfg.max_retries:
                break
            self._count("retries")
            pause = wait_s if wait_s is not None else min(cfg.max_backoff_s, delay)
            self._sleep(pause * (1.0 if wait_s is not None else random.uniform(0.5, 1.0)))
            delay *= 2
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
