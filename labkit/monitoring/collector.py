"""Read what every layer of a chain counted, without any layer importing monitoring code (docs/ARCHITECTURE.md).

Each labkit layer keeps its own counters: `SingleFlight.stats`, `RetryLayer.stats`, `HedgeLayer.stats`,
`CacheLayer.stats` (with one `TierStats` per tier), `AdmissionLayer.stats`, `CircuitBreaker.events` and `.state`,
`Balancer.backends`. `walk()` finds them by duck typing: a `Chain`'s `layers` and `transport`, a balancer's
backends (each backend's handler is usually a chain of its own with a breaker). `read_layers()` turns what it
finds into flat readings `(metric, labels, value, kind)` that `labkit.monitoring.exposition` writes as Prometheus
metrics with a `layer` label. The rules are generic, so a new layer with a `stats` dataclass or dict of numbers
shows up without any change here:

- a number field `x` becomes the counter `labkit_<layer kind>_<x>_total`; a float field `x_s` (seconds) becomes
  `labkit_<kind>_<x>_seconds_total`; `in_flight`, `outstanding` and `peak_*` are gauges;
- a mapping of numbers (a `Counter` such as `RetryStats.failures`) becomes one counter with a label named after
  the field (`failures` → `failure="server_error"`); a mapping of dataclasses (`CacheStats.tiers`) becomes one
  counter per field with that label (`labkit_cache_tier_hits_total{tier="memory"}`);
- ratios (`*_rate`, `*_share`) are left out: Prometheus computes them from the counters, over any window.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

__all__ = ["Reading", "layer_kind", "read_layers", "walk"]

Kind = Literal["counter", "gauge"]


@dataclasses.dataclass(frozen=True)
class Reading:
    name: str  # full Prometheus name, with _total for counters
    labels: tuple[tuple[str, str], ...]
    value: float
    kind: Kind
    help: str = ""


_GAUGES = ("in_flight", "outstanding")
_SKIP_SUFFIXES = ("_rate", "_share", "_ratio")
_SKIP_TYPES = ("MetricsLayer", "StageMark")


def layer_kind(obj: Any) -> str:
    """`RetryLayer` → `retry`, `CircuitBreaker` → `circuit_breaker`, `SingleFlight` → `single_flight`."""
    name = type(obj).__name__
    if name.endswith("Layer") and name != "Layer":
        name = name[: -len("Layer")]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def walk(root: Any) -> Iterator[Any]:
    """Every layer, transport and balancer backend gate under `root`, each object once, outermost first."""
    seen: set[int] = set()

    def visit(obj: Any) -> Iterator[Any]:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        layers = getattr(obj, "layers", None)
        if isinstance(layers, (tuple, list)) and hasattr(obj, "transport"):  # a Chain
            for layer in layers:
                yield from visit(layer)
            yield from visit(obj.transport)
            return
        yield obj
        for backend in getattr(obj, "backends", None) or ():  # a Balancer
            if hasattr(backend, "handler"):
                yield from visit(getattr(backend, "gate", None))
                yield from visit(backend.handler)

    yield from visit(root)


def _numbers(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    if isinstance(stats, Mapping):
        return dict(stats)
    return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric(kind: str, field: str) -> tuple[str, Kind]:
    if field in _GAUGES or field.startswith("peak_"):
        return f"labkit_{kind}_{field}", "gauge"
    if field.endswith("_s"):
        return f"labkit_{kind}_{field[:-2]}_seconds_total", "counter"
    return f"labkit_{kind}_{field}_total", "counter"


def _label_of(field: str) -> str:
    return field[:-1] if field.endswith("s") and not field.endswith("ss") else field


def _read_stats(kind: str, layer: str, stats: Any, out: list[Reading]) -> None:
    base = (("layer", layer),)
    for field, value in _numbers(stats).items():
        if field.startswith("_") or field.endswith(_SKIP_SUFFIXES):
            continue
        if _is_number(value):
            name, mkind = _metric(kind, field)
            out.append(Reading(name, base, float(value), mkind, f"{kind} layer: {field}"))
        elif isinstance(value, Mapping):
            label = _label_of(field)
            for key, inner in value.items():
                if _is_number(inner):
                    name, mkind = _metric(kind, field)
                    out.append(Reading(name, (*base, (label, str(key))), float(inner), mkind, f"{kind}: {field}"))
                else:
                    for sub, number in _numbers(inner).items():
                        if _is_number(number) and not sub.endswith(_SKIP_SUFFIXES):
                            name, mkind = _metric(f"{kind}_{label}", sub)
                            out.append(
                                Reading(name, (*base, (label, str(key))), float(number), mkind, f"{kind} per {label}")
                            )


def read_layers(root: Any) -> list[Reading]:
    """What every layer under `root` (a `Chain`, a balancer, or one layer) has counted so far."""
    out: list[Reading] = []
    names: dict[str, int] = {}
    for obj in walk(root):
        type_name = type(obj).__name__
        if type_name in _SKIP_TYPES:
            continue
        kind = layer_kind(obj)
        own = getattr(obj, "name", None)
        layer = own if isinstance(own, str) and own else kind
        names[layer] = names.get(layer, 0) + 1
        if names[layer] > 1:
            layer = f"{layer}#{names[layer]}"
        stats = getattr(obj, "stats", None)
        if stats is not None and not callable(stats):
            _read_stats(kind, layer, stats, out)
        events = getattr(obj, "events", None)
        if isinstance(events, Mapping):  # CircuitBreaker: opened / half_opened / closed / rejected / ...
            for event, n in events.items():
                if _is_number(n):
                    labels = (("layer", layer), ("event", str(event)))
                    out.append(Reading(f"labkit_{kind}_events_total", labels, float(n), "counter", f"{kind} events"))
        state = getattr(obj, "state", None)
        if isinstance(state, str) and events is not None:
            labels = (("layer", layer), ("state", state))
            out.append(Reading(f"labkit_{kind}_state", labels, 1.0, "gauge", f"{kind}: current state (1)"))
        for backend in getattr(obj, "backends", None) or ():
            bname = str(getattr(backend, "name", "?"))
            for field in ("picks", "failures", "outstanding"):
                value = getattr(backend, field, None)
                if _is_number(value):
                    metric, mkind = _metric(f"{kind}_backend", field)
                    labels = (("layer", layer), ("backend", bname))
                    out.append(Reading(metric, labels, float(value), mkind, f"{kind} per backend"))
        for field in ("fallbacks", "avoided"):
            value = getattr(obj, field, None)
            if _is_number(value) and getattr(obj, "backends", None):
                metric, mkind = _metric(kind, field)
                out.append(Reading(metric, (("layer", layer),), float(value), mkind, f"{kind}: {field}"))
    return out
