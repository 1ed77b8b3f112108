"""One Evolution server's HTTP: each request bounded, counted, timed and capped in size.

The client decides what an answer means; this module only gets it, and turns transport trouble
(timeouts, refused connections, resets) into a `TransientError` whose message holds no API key.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from reconciler.evolution.errors import EvolutionError, TransientError, clip
from reconciler.observability import Metrics
from reconciler.redaction import redact
from reconciler.settings import ServerConfig

_HTML_START = re.compile(rb"\s*<")
MAX_BODY = 64 * 1024 * 1024
"""Bigger than any real listing (a 202-instance v2.3.6 listing is 184 KB), small enough to hold."""


@dataclass(frozen=True)
class Answer:
    """A whole answer, read before the connection is given back."""

    status: int
    body: bytes | bytearray
    """As received: a 9 MB listing is not copied into `bytes` once more."""
    content_type: str

    def looks_html(self) -> bool:
        """By its type or its first character: matched in place (`lstrip` would copy 9 MB)."""
        return "html" in self.content_type or _HTML_START.match(self.body) is not None

    def json(self) -> Any:
        return json.loads(self.body)


class Transport:
    """Requests to one server: at most `max_concurrency` in flight, none longer than `timeout`,
    none read past `max_body` bytes; each counted and timed in `metrics` by endpoint."""

    def __init__(
        self,
        server: ServerConfig,
        *,
        timeout: float,
        metrics: Metrics | None,
        transport: httpx.AsyncBaseTransport | None,
        max_concurrency: int,
        max_body: int,
    ) -> None:
        self._server = server
        self._timeout = timeout
        self._metrics = metrics
        self._max_body = max_body
        self._http = httpx.AsyncClient(
            base_url=server.url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_concurrency,
                                max_keepalive_connections=max_concurrency),
        )
        self._limiter = anyio.CapacityLimiter(max_concurrency)

    async def aclose(self) -> None:
        await self._http.aclose()

    def scrub(self, text: str) -> str:
        """`text` fit for a log line: the API key masked, the length clipped."""
        return clip(redact(text, (self._server.api_key,)))

    def _observe(self, endpoint: str, code: str, seconds: float) -> None:
        if self._metrics is None:
            return
        name = self._server.name
        self._metrics.evolution_requests_total.labels(
            server=name, endpoint=endpoint, code=code).inc()
        self._metrics.evolution_request_duration_seconds.labels(
            server=name, endpoint=endpoint).observe(seconds)

    async def _read_capped(self, endpoint: str, response: httpx.Response) -> bytearray:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise self._oversized(endpoint, response.status_code)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > self._max_body:
                raise self._oversized(endpoint, response.status_code)
        return body

    def _oversized(self, endpoint: str, status: int) -> EvolutionError:
        return EvolutionError(
            f"{endpoint}: answer larger than the {self._max_body} byte cap", status=status)

    async def send(self, endpoint: str, method: str, path: str, *, auth: bool = True) -> Answer:
        """One request, counted and timed; transport trouble becomes a TransientError."""
        headers = {"apikey": self._server.api_key} if auth else {}
        async with self._limiter:
            started = time.perf_counter()
            code = "error"
            try:
                with anyio.fail_after(self._timeout):
                    async with self._http.stream(method, path, headers=headers) as response:
                        body = await self._read_capped(endpoint, response)
                        code = str(response.status_code)
                        return Answer(response.status_code, body,
                                      response.headers.get("content-type", "").lower())
            except EvolutionError:
                code = "oversized"
                raise
            except (TimeoutError, httpx.TimeoutException) as exc:
                code = "timeout"
                raise TransientError(
                    f"{endpoint}: no answer within {self._timeout:g} s") from exc
            except httpx.HTTPError as exc:
                raise TransientError(
                    self.scrub(f"{endpoint}: {type(exc).__name__}: {exc}")) from exc
            finally:
                self._observe(endpoint, code, time.perf_counter() - started)
