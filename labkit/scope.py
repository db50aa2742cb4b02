"""The scope of a request: which other requests may share its answer, its upstream call or its error.

Everything labkit shares between requests keys on one `Scope`: the exact cache, the semantic cache, in-flight
de-duplication in one process (`SingleFlight`) and across processes (`RedisSingleFlight`). Two requests share
something only when all four parts are equal:

- `tenant`: a keyed hash of the credential the request is sent with, never the credential itself. A layer's
  default tenant is its chain's (`build_chain` derives it from the endpoints' API keys); a request sent with
  another credential names it in its controls (``tenant``: an id of the caller's choosing, ``api_key``, or an
  ``Authorization`` header in ``headers``), and its scope follows. So one tenant's 401 or quota error, or its
  answer, never reaches another tenant.
- `namespace`: a partition the caller chooses (``controls["cache_namespace"]``), else the layer's.
- `model`: the model that serves the answer. A balancer that sends a request to a fallback model reports it on
  the result (`mark_served`), and a cache stores that answer under the fallback's scope, not the primary's.
- `fingerprint`: the canonical fingerprint of the request (`ChatRequest.key`), with `model` in it.

The tenant hash is BLAKE2b keyed with a salt: `LABKIT_TENANT_SALT` when set (a deployment's own secret makes the
hashes in a shared Redis useless to anyone without it), else a fixed one, so that every process of a deployment
derives the same tenant from the same key (the Redis tiers and the Redis flight are shared across processes).
Nothing here keeps a key: the hash is computed when needed (well under a microsecond).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from labkit.chain import Result
from labkit.fingerprint import fingerprint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

#: The tenant of a layer that was given no credential: requests that name none share it.
PUBLIC = "public"

_SALT = (os.environ.get("LABKIT_TENANT_SALT") or "labkit-tenant-v1").encode("utf-8")[:64]

#: Where a balancer reports the model that served a result (a stream's `info`, a completion's attribute).
SERVED_MODEL = "served_model"
_SERVED_ATTR = "_labkit_served_model"


def tenant_of(secret: str) -> str:
    """The tenant of an API key or tenant id: 16 hex digits of a keyed BLAKE2b hash, never the secret."""
    return hashlib.blake2b(secret.encode("utf-8"), key=_SALT, digest_size=8).hexdigest()


def tenant_of_endpoints(api_keys: Iterable[str]) -> str:
    """The tenant of a chain that sends with these keys (one key: that key's tenant)."""
    keys = sorted(set(api_keys))
    if not keys:
        return PUBLIC
    return tenant_of(keys[0] if len(keys) == 1 else "\0".join(keys))


def fingerprint_for(request: ChatRequest, model: str) -> str:
    """The fingerprint the request would have if it named `model` (the model a fallback served it with)."""
    if model == request.model:
        return request.key
    volatile = tuple(request.controls.get("volatile", ()))
    return fingerprint(model, request.messages, request.params, volatile=volatile)


def _authorization(headers: Any) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str) and value.strip():
            return value.strip().removeprefix("Bearer ").strip()
    return None


def request_tenant(controls: Mapping[str, Any], default: str = PUBLIC) -> str:
    """The tenant a request's controls name (``tenant``, ``api_key``, an ``Authorization`` header), else `default`.

    Raises `ValueError` for a ``tenant`` / ``api_key`` that is not a non-empty string.
    """
    if not controls:
        return default
    secret = controls.get("tenant")
    if secret is None:
        secret = controls.get("api_key")
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ValueError("controls 'tenant' / 'api_key' must be a non-empty string")
        return tenant_of(secret)
    headers = controls.get("headers")
    if headers:
        credential = _authorization(headers)
        if credential:
            return tenant_of(credential)
    return default


class Scope(NamedTuple):
    """Who may share a request's answer, upstream call and error (see the module docstring)."""

    tenant: str
    namespace: str
    model: str
    fingerprint: str

    def key(self, kind: str = "p") -> str:
        """``namespace:tenant:kind:fingerprint``; `kind` keeps plain (``p``) and streamed (``s``) answers apart."""
        return f"{self.namespace}:{self.tenant}:{kind}:{self.fingerprint}"


class Scoping:
    """How a layer finds the scope of a request: its defaults (tenant, namespace) and the request's controls.

    `api_key` is hashed at once and not kept; `tenant` is an already hashed tenant (`tenant_of`), as `build_chain`
    passes it. One `Scoping` may be shared by every layer of a chain.
    """

    __slots__ = ("namespace", "tenant")

    def __init__(self, *, api_key: str | None = None, tenant: str | None = None, namespace: str = "default") -> None:
        if api_key is not None and tenant is not None:
            raise ValueError("give a Scoping an api_key or a tenant, not both")
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            raise ValueError(f"namespace must be a non-empty string without ':', not {namespace!r}")
        self.tenant = tenant_of(api_key) if api_key else (tenant or PUBLIC)
        self.namespace = namespace

    @classmethod
    def of_endpoints(cls, endpoints: Iterable[Any], namespace: str = "default") -> Scoping:
        """The scoping of a chain over these endpoints (anything with an `api_key`)."""
        return cls(tenant=tenant_of_endpoints(e.api_key for e in endpoints), namespace=namespace)

    def tenant_for(self, request: ChatRequest) -> str:
        return request_tenant(request.controls, self.tenant)

    def of(self, request: ChatRequest, *, namespace: str | None = None, model: str | None = None) -> Scope:
        """The request's scope; `model` names the model that served it when that is not the request's own."""
        if model is None or model == request.model:
            return Scope(self.tenant_for(request), namespace or self.namespace, request.model, request.key)
        return Scope(self.tenant_for(request), namespace or self.namespace, model, fingerprint_for(request, model))

    def __repr__(self) -> str:
        return f"Scoping(tenant={self.tenant!r}, namespace={self.namespace!r})"


def mark_served(result: Result, model: str) -> None:
    """Record on a result that `model` served it (a balancer's fallback), for the caches to store it under."""
    if isinstance(result, ChunkStream):
        result.info[SERVED_MODEL] = model
    else:
        setattr(result, _SERVED_ATTR, model)


def served_model(result: Result) -> str | None:
    """The model a balancer reported serving this result with, or None when it was the request's own."""
    if isinstance(result, ChunkStream):
        return result.info.get(SERVED_MODEL)
    return result.__dict__.get(_SERVED_ATTR)


def copy_served(source: Result, target: Result) -> None:
    """Carry the served-model mark over to a copy of a result (a copy through `model_validate` drops it)."""
    model = served_model(source)
    if model is not None:
        mark_served(target, model)


__all__ = [
    "PUBLIC",
    "SERVED_MODEL",
    "Scope",
    "Scoping",
    "copy_served",
    "fingerprint_for",
    "mark_served",
    "request_tenant",
    "served_model",
    "tenant_of",
    "tenant_of_endpoints",
]
