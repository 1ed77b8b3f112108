"""Settings of SPEC section 8 (stub: being completed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """One Evolution API server: a name, a base URL, its global API key, the API line."""

    name: str
    url: str
    api_key: str
    version: str = "auto"
    """"auto" (detect from `GET /` and the responses), "v1" or "v2"."""

    def __repr__(self) -> str:
        return f"ServerConfig(name={self.name!r}, url={self.url!r}, version={self.version!r})"
