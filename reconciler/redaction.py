"""Secrets kept out of every message that is logged, shown or stored.

One helper for the Evolution client (API keys), the event publisher (Redis password), the store
(database password) and the settings (all of them), so that each masks the same way.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*'?([^\s'&]+)")
"""libpq's `password=...` keyword (a DSN) or query parameter."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret masked; longest first, so that a secret containing another is
    masked whole. Empty secrets are ignored (an unset key must not mask every gap)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def url_passwords(url: str) -> tuple[str, ...]:
    """Every spelling of the password in a URL or DSN (as written and percent-decoded, in the
    authority or a `password=` keyword), so that no message carries any of them."""
    found: list[str] = _KEYWORD_PASSWORD.findall(url)
    with contextlib.suppress(ValueError):
        if password := urlsplit(url).password:
            found += [password, unquote(password)]
    return tuple(p for p in found if p)
