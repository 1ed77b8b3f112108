"""The Evolution API client: one per server, reading v1 and v2 alike into the domain model.

Reads never raise for server trouble: a failed, partial or unparseable answer becomes a
`ServerReadError`, from which nothing is decided. Writes (logout, delete) raise `EvolutionError`,
except for the answers that mean the work is already done (404, "not connected").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Set
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar, cast

import anyio
import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from reconciler.evolution import v1, v2
from reconciler.evolution.errors import (
    EvolutionError,
    NeedsLogout,
    OperatorError,
    TransientError,
    clip,
    envelope_message,
    is_license_required,
)
from reconciler.evolution.liveness import (
    Bucket,
    Probe,
    carried,
    choose_probes,
    fingerprint,
    parse_connection_state,
    parse_metrics,
    refill,
)
from reconciler.evolution.wire import (
    API_LINES,
    V1,
    V2,
    Listing,
    ParseError,
    line_from_listing,
    line_from_root,
    path_segment,
    version_tuple,
)
from reconciler.model import (
    LiveState,
    ObservedInstance,
    ServerInventory,
    ServerRead,
    ServerReadError,
)
from reconciler.observability import Metrics
from reconciler.redaction import redact
from reconciler.settings import ServerConfig

T = TypeVar("T")

MAX_BODY = 64 * 1024 * 1024
"""Bigger than any real listing (a 202-instance v2.3.6 listing is 184 KB), small enough to hold."""
METRICS_SINCE = (2, 3, 3)
"""Evolution serves `/metrics` from 2.3.3, when `PROMETHEUS_METRICS=true`."""
READ_STAGE = "read_observed"
_GATEWAY_ERRORS = frozenset({502, 503, 504})


def _read_may_recover(status: int) -> bool:
    """A read is safe to repeat: any server error, a timeout or throttling may pass."""
    return status >= 500 or status in (408, 429)


def _write_may_recover(status: int) -> bool:
    """A write is repeated only where the request may not have reached Evolution."""
    return status in _GATEWAY_ERRORS


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str

    def looks_html(self) -> bool:
        return "html" in self.content_type or self.body.lstrip()[:1] == b"<"

    def json(self) -> Any:
        return json.loads(self.body)


def _instance_gone(message: str | None) -> bool:
    """A 404 naming a missing instance (done), not a missing route (a wrong URL)."""
    text = (message or "").lower()
    return "does not exist" in text or ("not found" in text and not text.startswith("cannot "))


class EvolutionClient:
    """Talks to one Evolution API server: the inventory, live states, logout and delete.

    `retry_attempts`/`retry_wait` shape the jittered exponential backoff of reads (and of
    writes after gateway errors, which are safe to repeat because 404 means done);
    `max_concurrency` bounds requests in flight to this server; `max_body` caps what is read;
    `probe_burst` is how many seconds of `probe_rps` one pass may spend at once (a pass should
    not stall on probes: tombstones are reconciled in seconds).
    """

    def __init__(
        self,
        server: ServerConfig,
        *,
        timeout: float = 60.0,
        metrics: Metrics | None = None,
        probe_rps: float = 10.0,
        probe_interval: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrency: int = 4,
        retry_attempts: int = 3,
        retry_wait: float = 0.5,
        max_body: int = MAX_BODY,
        probe_burst: float = 10.0,
    ) -> None:
        if server.version not in (*API_LINES, "auto"):
            raise ValueError(f"server {server.name!r}: version must be auto, v1 or v2")
        self._server = server
        self._timeout = timeout
        self._metrics = metrics
        self._probe_rps = probe_rps
        self._probe_interval = probe_interval
        self._probe_capacity = max(1.0, probe_rps * probe_burst)
        self._retry_attempts = max(1, retry_attempts)
        self._retry_wait = retry_wait
        self._max_body = max_body
        self._log = structlog.get_logger("reconciler.evolution").bind(server=server.name)
        self._http = httpx.AsyncClient(
            base_url=server.url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_concurrency,
                                max_keepalive_connections=max_concurrency),
        )
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._client_name: str | None = None
        self._version: str | None = None
        self._api_line: str | None = server.version if server.version in API_LINES else None
        self._metrics_available: bool | None = None
        self._metrics_retry_at = 0.0
        self._probes: dict[str, Probe] = {}
        self._previous: frozenset[str] | None = None
        self._bucket = Bucket(self._probe_capacity, time.monotonic())
        self._next_probe_slot = 0.0
        self._probing_since: float | None = None
        self._next_budget_warning = 0.0

    async def __aenter__(self) -> EvolutionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def client_name(self) -> str | None:
        return self._client_name

    @property
    def api_line(self) -> str | None:
        return self._api_line

    @property
    def version(self) -> str | None:
        return self._version

    # --- transport -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return clip(redact(text, (self._server.api_key,)))

    def _observe(self, endpoint: str, code: str, seconds: float) -> None:
        if self._metrics is None:
            return
        name = self._server.name
        self._metrics.evolution_requests_total.labels(
            server=name, endpoint=endpoint, code=code).inc()
        self._metrics.evolution_request_duration_seconds.labels(
            server=name, endpoint=endpoint).observe(seconds)

    async def _read_capped(self, endpoint: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise self._oversized(endpoint, response.status_code)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > self._max_body:
                raise self._oversized(endpoint, response.status_code)
        return bytes(body)

    def _oversized(self, endpoint: str, status: int) -> EvolutionError:
        return EvolutionError(
            f"{endpoint}: answer larger than the {self._max_body} byte cap", status=status)

    async def _send(self, endpoint: str, method: str, path: str, *, auth: bool = True) -> _Answer:
        """One request, counted and timed; transport trouble becomes a transient EvolutionError."""
        headers = {"apikey": self._server.api_key} if auth else {}
        async with self._limiter:
            started = time.perf_counter()
            code = "error"
            try:
                with anyio.fail_after(self._timeout):
                    async with self._http.stream(method, path, headers=headers) as response:
                        body = await self._read_capped(endpoint, response)
                        code = str(response.status_code)
                        return _Answer(response.status_code, body,
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
                    self._scrub(f"{endpoint}: {type(exc).__name__}: {exc}")) from exc
            finally:
                self._observe(endpoint, code, time.perf_counter() - started)

    def _failure(self, endpoint: str, answer: _Answer,
                 may_recover: Callable[[int], bool] = _read_may_recover) -> EvolutionError:
        """Why an answer is not the one asked for, typed by whether a person or a retry can fix
        it; `may_recover` says which other statuses a retry may fix."""
        status = answer.status
        unknown = TransientError if may_recover(status) else EvolutionError
        if answer.looks_html():
            kind = OperatorError if status < 500 else unknown
            return kind(f"{endpoint}: HTTP {status} with an HTML page (a proxy or a wrong URL?)",
                        status=status)
        try:
            body = answer.json()
        except ValueError:
            body = None
        message = envelope_message(body)
        detail = self._scrub(f"{endpoint}: HTTP {status}" + (f": {message}" if message else ""))
        if is_license_required(body):
            return OperatorError(detail + " (the server's licence is not activated)",
                                 status=status)
        if status == 401:
            return OperatorError(detail + " (the server rejected the API key)", status=status)
        if status in (403, 404):
            return OperatorError(detail + " (wrong URL or route?)", status=status)
        return unknown(detail, status=status)

    def _json(self, endpoint: str, answer: _Answer) -> Any:
        if answer.looks_html():
            raise self._failure(endpoint, answer)
        try:
            return answer.json()
        except ValueError as exc:
            raise TransientError(
                f"{endpoint}: HTTP {answer.status} body is not JSON (truncated or broken)",
                status=answer.status) from exc

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._log.info("evolution.retry", attempt=state.attempt_number,
                       error=str(exc) if exc else None)

    async def _retrying(self, call: Callable[[], Awaitable[T]],
                        retry_if: Callable[[BaseException], bool]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts),
            wait=wait_random_exponential(multiplier=self._retry_wait, max=self._retry_wait * 8),
            retry=retry_if_exception(retry_if),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return cast(T, await retrying(call))

    async def _get_json(self, endpoint: str, path: str, *, auth: bool = True) -> Any:
        """A read: retried with backoff while the failure is transient."""
        async def attempt() -> Any:
            answer = await self._send(endpoint, "GET", path, auth=auth)
            if answer.status != 200:
                raise self._failure(endpoint, answer)
            body = self._json(endpoint, answer)
            if isinstance(body, dict) and body.get("error") is True:
                message = envelope_message(body) or "no message"
                raise TransientError(
                    self._scrub(f"{endpoint}: HTTP 200 carrying an error: {message}"),
                    status=200)
            return body

        return await self._retrying(attempt, lambda e: isinstance(e, TransientError))

    # --- reads ---------------------------------------------------------------------------

    async def _read_root(self) -> dict[str, Any]:
        root = await self._get_json("root", "/", auth=False)
        if not isinstance(root, dict):
            raise EvolutionError(f"root: answered {type(root).__name__}, not an object")
        version = root.get("version")
        client_name = root.get("clientName")
        self._version = version if isinstance(version, str) else None
        self._client_name = client_name if isinstance(client_name, str) else None
        return root

    def _settle_line(self, root: dict[str, Any] | None, body: object) -> str:
        """The API line: pinned, else from `GET /`, else from the listing's shape."""
        if self._server.version in API_LINES:
            return self._server.version
        detected = (line_from_root(root) if root else None) or line_from_listing(body) \
            or self._api_line or V2
        if detected != self._api_line:
            self._log.info("evolution.api_line", api_line=detected, version=self._version)
        self._api_line = detected
        return detected

    def _parse(self, line: str, body: object) -> Listing:
        """The listing, each odd item reported (its anomaly reaches logs, audit and output)."""
        try:
            if line == V1:
                listing = v1.parse_listing(body, self._server.name)
            else:
                listing = v2.parse_listing(body, self._server.name)
        except ParseError as exc:
            raise EvolutionError(self._scrub(f"fetchInstances ({line}): {exc}")) from exc
        instances = []
        for instance in listing.instances:
            if instance.anomaly is not None:
                instance = replace(instance, anomaly=self._scrub(instance.anomaly))
                self._log.warning("evolution.item_anomaly", instance=instance.name,
                                  anomaly=instance.anomaly)
            instances.append(instance)
        return Listing(tuple(instances))

    async def read(self, *, want_live: Collection[str] = ()) -> ServerRead:
        """One pass's read of this server: who it holds, and in which live state.

        Never raises for server trouble: any failed, partial or unparseable answer is a
        `ServerReadError`. v1 lists live states itself; v2 live states come from `/metrics`
        or from probes of the instances in `want_live` first (see `liveness`).
        """
        try:
            root = await self._read_root()
            body = await self._get_json("fetchInstances", "/instance/fetchInstances")
            line = self._settle_line(root, body)
            listing = self._parse(line, body)
        except EvolutionError as exc:
            operator_error = isinstance(exc, OperatorError)
            log = self._log.error if operator_error else self._log.warning
            log("evolution.read_failed", error=exc.message, operator_error=operator_error,
                status=exc.status)
            return ServerReadError(server=self._server.name, stage=READ_STAGE,
                                   error=exc.message, operator_error=operator_error)
        instances = listing.instances
        if line == V2:
            instances = await self._with_live(instances, frozenset(want_live))
        return ServerInventory(
            server=self._server.name,
            api_line=line,
            version=self._version,
            client_name=self._client_name,
            instances=instances,
        )

    async def list_names(self) -> frozenset[str]:
        """Names the unfiltered listing holds now: how a deletion is verified."""
        body = await self._get_json("fetchInstances", "/instance/fetchInstances")
        line = self._settle_line(None, body)
        try:
            return frozenset(v1.names(body) if line == V1 else v2.names(body))
        except ParseError as exc:
            raise EvolutionError(self._scrub(f"fetchInstances ({line}): {exc}")) from exc

    # --- live state ----------------------------------------------------------------------

    async def _with_live(
        self, instances: tuple[ObservedInstance, ...], want: frozenset[str]
    ) -> tuple[ObservedInstance, ...]:
        live = await self._live_from_metrics()
        if live is None:
            live = await self._live_from_probes(instances, want)
        return tuple(replace(i, live=live.get(i.name, LiveState.UNKNOWN)) for i in instances)

    def _metrics_worth_trying(self, now: float) -> bool:
        parsed = version_tuple(self._version)
        if parsed is not None and parsed < METRICS_SINCE:
            return False
        return self._metrics_available is not False or now >= self._metrics_retry_at

    async def _live_from_metrics(self) -> dict[str, LiveState] | None:
        now = time.monotonic()
        if not self._metrics_worth_trying(now):
            return None
        try:
            answer = await self._send("metrics", "GET", "/metrics", auth=False)
        except EvolutionError as exc:
            self._log.info("evolution.metrics_unreadable", error=exc.message)
            return None
        states = None
        if answer.status == 200 and not answer.looks_html():
            states = parse_metrics(answer.body.decode("utf-8", errors="replace"))
        if states is None:
            if self._metrics_available is not False:
                self._log.info("evolution.metrics_unavailable", status=answer.status,
                               fallback="connectionState probes")
            self._metrics_available = False
            self._metrics_retry_at = now + self._probe_interval
            return None
        self._metrics_available = True
        return states

    async def _probe(self, name: str) -> LiveState:
        """One paced `connectionState`; anything but a clear answer is UNKNOWN, never "close"."""
        now = time.monotonic()
        slot = max(now, self._next_probe_slot)
        self._next_probe_slot = slot + 1.0 / self._probe_rps
        if slot > now:
            await anyio.sleep(slot - now)
        try:
            answer = await self._send(
                "connectionState", "GET", _instance_path("connectionState", name))
            if answer.status != 200:
                return LiveState.UNKNOWN
            return parse_connection_state(answer.json())
        except (EvolutionError, ValueError):
            return LiveState.UNKNOWN

    async def _live_from_probes(
        self, instances: tuple[ObservedInstance, ...], want: frozenset[str]
    ) -> dict[str, LiveState]:
        now = time.monotonic()
        prints = {i.name: fingerprint(i) for i in instances}
        self._bucket = refill(self._bucket, now, self._probe_rps, self._probe_capacity)
        chosen = choose_probes(prints, want, self._probes, self._previous, now,
                               self._probe_interval, math.floor(self._bucket.tokens))
        results: dict[str, LiveState] = {}

        async def probe(name: str) -> None:
            results[name] = await self._probe(name)

        async with anyio.create_task_group() as group:
            for name in chosen:
                group.start_soon(probe, name)
        self._bucket = Bucket(self._bucket.tokens - len(chosen), self._bucket.at)
        probes = {n: p for n, p in self._probes.items() if n in prints}
        probes.update({n: Probe(now, state, prints[n]) for n, state in results.items()})
        self._probes = probes
        self._previous = frozenset(prints)
        self._warn_if_overdue(want.intersection(prints), now)
        return {name: carried(probes.get(name), fp, now, self._probe_interval)
                for name, fp in prints.items()}

    def _warn_if_overdue(self, wanted: Set[str], now: float) -> None:
        """Say so when the budget cannot probe every wanted instance within the interval."""
        if self._probing_since is None:
            self._probing_since = now
        overdue = sum(
            1 for name in wanted
            if now - (self._probes[name].at if name in self._probes else self._probing_since)
            >= self._probe_interval)
        if overdue and now >= self._next_budget_warning:
            self._next_budget_warning = now + self._probe_interval
            self._log.warning(
                "evolution.probe_budget_short", overdue=overdue, wanted=len(wanted),
                hint="enable PROMETHEUS_METRICS on the server, or raise RECONCILER_PROBE_RPS")

    # --- writes --------------------------------------------------------------------------

    async def _write(self, endpoint: str, path: str,
                     done: Callable[[_Answer, str | None], bool]) -> None:
        """A DELETE that is safe to repeat (404 means done): retried only where the request
        may not have reached Evolution (transport trouble, gateway errors)."""
        async def attempt() -> None:
            answer = await self._send(endpoint, "DELETE", path)
            body = None if answer.looks_html() else _safe_json(answer)
            if body is not None and done(answer, envelope_message(body)):
                return
            raise self._failure(endpoint, answer, _write_may_recover)

        await self._retrying(attempt, lambda e: isinstance(e, TransientError))

    async def logout(self, name: str) -> None:
        """Log an instance out; a missing or already disconnected one counts as done."""
        def done(answer: _Answer, message: str | None) -> bool:
            if answer.status == 200:
                return _safe_json(answer) is not None and not _error_flag(answer)
            if answer.status == 404:
                return _instance_gone(message)
            return answer.status == 400 and "not connected" in (message or "")

        await self._write("logout", _instance_path("logout", name), done)
        self._log.info("evolution.logged_out", instance=name)

    async def delete(self, name: str) -> None:
        """Ask for a deletion; a missing instance counts as done. The server answers before
        its cleanup is finished: verify with `list_names` before reporting the instance gone."""
        def done(answer: _Answer, message: str | None) -> bool:
            if answer.status == 200:
                return _safe_json(answer) is not None and not _error_flag(answer)
            if answer.status == 404:
                return _instance_gone(message)
            if answer.status == 400 and "needs to be disconnected" in (message or ""):
                raise NeedsLogout(
                    self._scrub(f"delete: HTTP 400: {message} (log it out first)"), status=400)
            return False

        await self._write("delete", _instance_path("delete", name), done)
        self._log.info("evolution.delete_requested", instance=name)


def _instance_path(route: str, name: str) -> str:
    return f"/instance/{route}/{path_segment(name)}"


def _safe_json(answer: _Answer) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None


def _error_flag(answer: _Answer) -> bool:
    body = _safe_json(answer)
    return isinstance(body, dict) and body.get("error") is True
