"""Keep credentials out of logs, errors, metadata and files.

``redact`` masks the password of a URL's userinfo (``scheme://user:secret@host`` ->
``scheme://user:***@host``) and the values of query parameters that carry secrets
(``token=``, ``sig=``, ``X-Amz-Signature=`` ...). ``strip_credentials`` removes userinfo
altogether (what a ledger or shard should store). :func:`install` makes every log
record and uncaught traceback of the process pass through ``redact``.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/\s@]+)@"
)
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_-]*(?:token|secret|password|passwd|pwd|signature|sig|"
    r"api[_-]?key|apikey|access[_-]?key|credential)[A-Za-z0-9_-]*))=(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with URL passwords and secret-bearing query values replaced by ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}={MASK}", text)


def strip_credentials(url: str) -> str:
    """``url`` without its userinfo (``user:pw@``) and with secret query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return redact(url)


class _RedactingRecord(logging.LogRecord):
    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return redact(super().getMessage())


def _excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


_installed = False


def install() -> None:
    """Redact every log message and uncaught traceback of this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    logging.setLogRecordFactory(_RedactingRecord)
    sys.excepthook = _excepthook
