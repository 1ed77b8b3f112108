"""The Evolution API client: one per server, reading v1 and v2 alike into the domain model.

Reads never raise for server trouble: a failed, partial or unparseable answer becomes a
`ServerReadError`, from which nothing is decided. Writes (logout, delete) raise `EvolutionError`,
except for the answers that mean the work is already done (404, "not connected").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
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

import reconciler.evolution.v1 as v1
import reconciler.evolution.v2 as v2
from reconciler.evolution.errors import (
    EvolutionError,
    NeedsLogout,
    OperatorError,
    TransientError,
    envelope_message,
    is_license_required,
)
from reconciler.evolution.listing import Items, ListingCache, split
from reconciler.evolution.live import LiveReader
from reconciler.evolution.liveness import parse_connection_state
from reconciler.evolution.transport import MAX_BODY, Answer, Transport
from reconciler.evolution.wire import (
    API_LINES,
    V1,
    V2,
    Listing,
    ParseError,
    instance_path,
    line_from_listing,
    line_from_root,
    path_segment,
)
from reconciler.model import (
    LiveState,
    ObservedInstance,
    ServerInventory,
    ServerRead,
    ServerReadError,
    Stage,
)
from reconciler.observability import Metrics
from reconciler.settings import ServerConfig

T = TypeVar("T")

_GATEWAY_ERRORS = frozenset({502, 503, 504})


def _read_may_recover(status: int) -> bool:
    """A read is safe to repeat: any server error, a timeout or throttling may pass."""
    return status >= 500 or status in (408, 429)


def _write_may_recover(status: int) -> bool:
    """A write is repeated only where the request may not have reached Evolution."""
    return status in _GATEWAY_ERRORS


def _instance_gone(message: str | None) -> bool:
    """A 404 naming a missing instance (done), not a missing route (a wrong URL)."""
    text = (message or "").lower()
    return "does not exist" in text or ("not found" in text and not text.startswith("cannot "))


class EvolutionClient:
    """Talks to one Evolution API server: the inventory, live states, logout and delete.

    `retry_attempts`/`retry_wait` shape the jittered exponential backoff of reads (and of
    writes after gateway errors, which are safe to repeat because 404 means done);
    `max_concurrency` bounds requests in flight to this server; `max_body` caps what is read
    (see `Transport`); `probe_rps`, `probe_interval` and `probe_burst` pace live-state probes
    (see `LiveReader`).
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
        self._retry_attempts = max(1, retry_attempts)
        self._retry_wait = retry_wait
        self._log = structlog.get_logger("reconciler.evolution").bind(server=server.name)
        self.max_concurrency = max_concurrency
        """Requests in flight to this server at most: how many deletions the executor runs."""
        self._http = Transport(server, timeout=timeout, metrics=metrics, transport=transport,
                               max_concurrency=max_concurrency, max_body=max_body)
        self._listings = ListingCache(server.name, self._scrubbed)
        self._live = LiveReader(self._http, self._log, probe_rps=probe_rps,
                                probe_interval=probe_interval, probe_burst=probe_burst)
        self._client_name: str | None = None
        self._version: str | None = None
        self._api_line: str | None = server.version if server.version in API_LINES else None

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

    # --- answers --------------------------------------------------------------------------

    def _failure(self, endpoint: str, answer: Answer,
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
        detail = self._http.scrub(
            f"{endpoint}: HTTP {status}" + (f": {message}" if message else ""))
        if is_license_required(body):
            return OperatorError(detail + " (the server's licence is not activated)",
                                 status=status)
        if status == 401:
            return OperatorError(detail + " (the server rejected the API key)", status=status)
        if status in (403, 404):
            return OperatorError(detail + " (wrong URL or route?)", status=status)
        return unknown(detail, status=status)

    def _json(self, endpoint: str, answer: Answer,
              decode: Callable[[bytes | bytearray], Any] = json.loads) -> Any:
        if answer.looks_html():
            raise self._failure(endpoint, answer)
        try:
            return decode(answer.body)
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

    async def _get_json(self, endpoint: str, path: str, *, auth: bool = True,
                        decode: Callable[[bytes | bytearray], Any] = json.loads) -> Any:
        """A read: retried with backoff while the failure is transient."""
        async def attempt() -> Any:
            answer = await self._http.send(endpoint, "GET", path, auth=auth)
            if answer.status != 200:
                raise self._failure(endpoint, answer)
            body = self._json(endpoint, answer, decode)
            if isinstance(body, dict) and body.get("error") is True:
                message = envelope_message(body) or "no message"
                raise TransientError(
                    self._http.scrub(f"{endpoint}: HTTP 200 carrying an error: {message}"),
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

    def _expected_line(self, root: dict[str, Any]) -> str | None:
        """The API line before the listing says: pinned, from `GET /`, or as last seen."""
        if self._server.version in API_LINES:
            return self._server.version
        return line_from_root(root) or self._api_line

    def _settle_line(self, root: dict[str, Any] | None, body: object) -> str:
        """The API line: pinned, else from `GET /`, else from the listing's shape."""
        if self._server.version in API_LINES:
            return self._server.version
        shape = body.line() if isinstance(body, Items) else line_from_listing(body)
        detected = (line_from_root(root) if root else None) or shape or self._api_line or V2
        if detected != self._api_line:
            self._log.info("evolution.api_line", api_line=detected, version=self._version)
        self._api_line = detected
        return detected

    def _parse(self, line: str, body: object, *, filtered: bool = False) -> Listing:
        """The listing, each odd item reported (its anomaly reaches logs, audit and output)."""
        try:
            if isinstance(body, Items):
                listing = self._listings.parse(line, body.raws)
            elif line == V1:
                listing = v1.parse_listing(body, self._server.name, filtered=filtered)
            else:
                listing = v2.parse_listing(body, self._server.name)
        except ParseError as exc:
            raise EvolutionError(self._http.scrub(f"fetchInstances ({line}): {exc}")) from exc
        if not isinstance(body, Items):
            listing = Listing(tuple(self._scrubbed(i) for i in listing.instances))
        for instance in listing.instances:
            if instance.anomaly is not None:
                self._log.warning("evolution.item_anomaly", instance=instance.name,
                                  anomaly=instance.anomaly)
        return listing

    def _scrubbed(self, instance: ObservedInstance) -> ObservedInstance:
        if instance.anomaly is None:
            return instance
        return replace(instance, anomaly=self._http.scrub(instance.anomaly))

    async def read(
        self, *, want_live: Collection[str] | Callable[[], Awaitable[Collection[str]]] = ()
    ) -> ServerRead:
        """One pass's read of this server: who it holds, and in which live state.

        Never raises for server trouble: any failed, partial or unparseable answer is a
        `ServerReadError`. v1 lists live states itself; v2 live states come from `/metrics`
        or from probes of the instances in `want_live` first (see `liveness`), which may be
        given as something to await, awaited only if probes are needed.
        """
        async def wanted() -> frozenset[str]:
            return frozenset(await want_live() if callable(want_live) else want_live)

        scraped: dict[str, LiveState] | None = None

        async def scrape() -> None:
            nonlocal scraped
            scraped = await self._live.scrape(self._version)

        try:
            root = await self._read_root()
            early = self._expected_line(root) == V2
            async with anyio.create_task_group() as tg:
                if early:
                    tg.start_soon(scrape)  # /metrics while the listing is read
                body = await self._listing_or_error()
            if isinstance(body, EvolutionError):
                raise body
            line = self._settle_line(root, body)
            listing = self._parse(line, body)
        except EvolutionError as exc:
            operator_error = isinstance(exc, OperatorError)
            log = self._log.error if operator_error else self._log.warning
            log("evolution.read_failed", error=exc.message, operator_error=operator_error,
                status=exc.status)
            return ServerReadError(server=self._server.name, stage=Stage.READ_OBSERVED,
                                   error=exc.message, operator_error=operator_error)
        instances = listing.instances
        if line == V2:
            if not early:
                await scrape()
            instances = await self._live.with_live(instances, wanted, scraped)
        return ServerInventory(
            server=self._server.name,
            api_line=line,
            version=self._version,
            client_name=self._client_name,
            instances=instances,
        )

    async def _listing_or_error(self) -> Any:
        """The unfiltered listing, or the error that stopped it (raised by the caller, outside
        the task group that scrapes `/metrics` meanwhile)."""
        try:
            return await self._get_json("fetchInstances", "/instance/fetchInstances",
                                        decode=split)
        except EvolutionError as exc:
            return exc

    async def read_instance(self, name: str) -> ServerRead:
        """A hint's read of one instance (SPEC 4.5): the filtered listing for its stored fields,
        `connectionState` for its live state (v2); an inventory of it alone, empty where the
        server does not list it. Never raises for server trouble, like `read`."""
        try:
            line = self._api_line or self._settle_line(await self._read_root(), None)
            path = f"/instance/fetchInstances?instanceName={path_segment(name)}"
            answer = await self._http.send("fetchInstances", "GET", path)
            body = None if answer.looks_html() else _safe_json(answer)
            message = envelope_message(body) if isinstance(body, dict) else None
            if answer.status in (404, 500) and _instance_gone(message):
                instances: tuple[ObservedInstance, ...] = ()
            elif answer.status != 200 or body is None or _error_flag(answer):
                raise self._failure("fetchInstances", answer)
            else:
                instances = self._parse(line, body, filtered=True).instances
            if line == V2 and instances:
                state = await self._http.send(
                    "connectionState", "GET", instance_path("connectionState", name))
                live = (parse_connection_state(_safe_json(state)) if state.status == 200
                        else LiveState.UNKNOWN)
                instances = tuple(replace(i, live=live) for i in instances)
        except EvolutionError as exc:
            return ServerReadError(server=self._server.name, stage=Stage.READ_OBSERVED,
                                   error=exc.message,
                                   operator_error=isinstance(exc, OperatorError))
        return ServerInventory(server=self._server.name, api_line=line, version=self._version,
                               client_name=self._client_name,
                               instances=tuple(i for i in instances if i.name == name))

    async def list_names(self) -> frozenset[str]:
        """Names the unfiltered listing holds now: how a deletion is verified."""
        body = await self._get_json("fetchInstances", "/instance/fetchInstances")
        line = self._settle_line(None, body)
        try:
            return frozenset(v1.names(body) if line == V1 else v2.names(body))
        except ParseError as exc:
            raise EvolutionError(self._http.scrub(f"fetchInstances ({line}): {exc}")) from exc

    # --- writes --------------------------------------------------------------------------

    async def _write(self, endpoint: str, path: str,
                     done: Callable[[Answer, str | None], bool]) -> None:
        """A DELETE that is safe to repeat (404 means done): retried only where the request
        may not have reached Evolution (transport trouble, gateway errors)."""
        async def attempt() -> None:
            answer = await self._http.send(endpoint, "DELETE", path)
            body = None if answer.looks_html() else _safe_json(answer)
            if body is not None and done(answer, envelope_message(body)):
                return
            raise self._failure(endpoint, answer, _write_may_recover)

        await self._retrying(attempt, lambda e: isinstance(e, TransientError))

    async def logout(self, name: str) -> None:
        """Log an instance out; a missing or already disconnected one counts as done."""
        def done(answer: Answer, message: str | None) -> bool:
            if answer.status == 200:
                return _safe_json(answer) is not None and not _error_flag(answer)
            if answer.status == 404:
                return _instance_gone(message)
            return answer.status == 400 and "not connected" in (message or "")

        await self._write("logout", instance_path("logout", name), done)
        self._log.info("evolution.logged_out", instance=name)

    async def delete(self, name: str) -> None:
        """Ask for a deletion; a missing instance counts as done. The server answers before
        its cleanup is finished: verify with `list_names` before reporting the instance gone."""
        def done(answer: Answer, message: str | None) -> bool:
            if answer.status == 200:
                return _safe_json(answer) is not None and not _error_flag(answer)
            if answer.status == 404:
                return _instance_gone(message)
            if answer.status == 400 and "needs to be disconnected" in (message or ""):
                raise NeedsLogout(
                    self._http.scrub(f"delete: HTTP 400: {message} (log it out first)"), status=400)
            return False

        await self._write("delete", instance_path("delete", name), done)
        self._log.info("evolution.delete_requested", instance=name)


def _safe_json(answer: Answer) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None


def _error_flag(answer: Answer) -> bool:
    body = _safe_json(answer)
    return isinstance(body, dict) and body.get("error") is True
