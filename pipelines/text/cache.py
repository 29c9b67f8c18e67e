"""Content-addressed response cache: (provider, model, prompt, sampling params) -> answer.

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

    def key(self, provider: str, model: str) -> str:
        blob = json.dumps(
            {
                "provider": provider,
                "model": model,
                "messages": self.as_messages(),
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "seed": self.seed,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


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
        return Completion(rec["response"], rec["prompt_tokens"], rec["completion_tokens"])

    def put(
        self, key: str, provider: str, model: str, request: ChatRequest, completion: Completion
    ) -> None:
        rec = {
            "key": key,
            "provider": provider,
            "model": model,
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
