"""Content-addressed response cache: (provider, endpoint, model, route, prompt, sampling
params) -> answer.

The key holds the endpoint: the same model id served by another server (another
``base_url``) is another model as far as the cache knows, so its answers are asked
again, never borrowed from the first server. The default OpenAI endpoint and the offline
provider add no endpoint to the key (the keys of caches written before it held one stay
valid), and the chat route adds none either (the completions route does).

One JSON object per line, appended and flushed as each answer arrives, so a run that is
killed keeps everything it fetched and the next run resumes where it stopped. A torn
last line (a kill mid-write) is skipped and counted. The file lives in the corpus
folder and is versioned by DVC with it (``persist: true``, so a rerun keeps it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float
    max_tokens: int
    seed: int | None

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def as_prompt(self) -> str:
        """The text a completions-only model continues: the messages' contents, one
        paragraph each, then a newline (the answer starts on the next line)."""
        return "\n\n".join(c for _, c in self.messages) + "\n"

    def key(
        self, provider: str, model: str, endpoint: str | None = None, route: str = "chat"
    ) -> str:
        body: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "messages": self.as_messages(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        if endpoint is not None:
            body["endpoint"] = endpoint
        if route != "chat":
            body["route"] = route
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str | None = None  # the model the reply says answered (None: offline, not told)


class ResponseCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.entries[rec["key"]] = rec
                    except (ValueError, KeyError, TypeError):
                        self.torn_lines += 1
        self._fh = None

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Completion | None:
        rec = self.entries.get(key)
        if rec is None:
            return None
        return Completion(
            rec["response"],
            rec["prompt_tokens"],
            rec["completion_tokens"],
            rec.get("served_model"),
        )

    def put(
        self,
        key: str,
        provider: str,
        model: str,
        request: ChatRequest,
        completion: Completion,
        endpoint: str | None = None,
    ) -> None:
        rec = {
            "key": key,
            "provider": provider,
            "model": model,
            "endpoint": endpoint,
            "served_model": completion.model,
            "messages": request.as_messages(),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "response": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        }
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if self._fh.tell() > 0 and self.torn_lines:
                self._fh.write("\n")  # never glue a record onto a torn line
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS's hands: a killed process loses nothing
        self.entries[key] = rec

    def close(self) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
