"""Where requests go: an endpoint's base URL and key, from the environment or the local simulated service.

The lab runs offline against `labkit.sim` by default and unchanged against a real provider when
`OPENAI_BASE_URL` (and `OPENAI_API_KEY`) are set, the same variables the official SDK reads.
"""

from __future__ import annotations

import dataclasses
import os

LOCAL_API_KEY = "sk-lab-local"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint: a base URL ending in `/v1`, an API key and a short name.

    The key is left out of the repr (displaying a chain in a notebook must not print it); `tenant` is the
    keyed hash that caches and de-duplication scope its requests by (`labkit.scope`).
    """

    base_url: str
    api_key: str = dataclasses.field(default=LOCAL_API_KEY, repr=False)
    name: str = "default"
    simulated: bool = False
    """True only for a simulated service the lab started itself (`labkit.lab.simservice`): a key says nothing
    about the server behind it (vLLM or Ollama take any key, or none)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")

    @property
    def is_simulated(self) -> bool:
        """Whether the lab started this service, so its admin routes (faults, limits, counters) are there."""
        return self.simulated

    @property
    def tenant(self) -> str:
        """The tenant of this endpoint's key: a keyed hash, never the key (`labkit.scope.tenant_of`)."""
        from labkit.scope import tenant_of  # labkit.scope imports the chain, which needs no endpoint

        return tenant_of(self.api_key)

    @classmethod
    def from_env(cls, default_base_url: str | None = None, name: str = "default") -> Endpoint:
        """`OPENAI_BASE_URL`/`OPENAI_API_KEY` when set, else the given local (simulated) base URL."""
        base_url = os.environ.get("OPENAI_BASE_URL") or default_base_url
        if not base_url:
            raise RuntimeError("no endpoint: set OPENAI_BASE_URL or start the simulated service (labkit.lab.services)")
        api_key = os.environ.get("OPENAI_API_KEY") if os.environ.get("OPENAI_BASE_URL") else None
        return cls(base_url=base_url.rstrip("/"), api_key=api_key or LOCAL_API_KEY, name=name)
