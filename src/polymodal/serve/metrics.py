"""Prometheus metrics in the text exposition format (0.0.4), without the client library.

Three kinds are enough for the service: counters, gauges and cumulative histograms, each with labels.
Every update takes one lock; the service updates a handful of series per request, so contention is nil."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = list(labels) + ([extra] if extra else [])
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {sorted(labels)}")
        return tuple((k, str(labels[k])) for k in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # per label set: [count per bucket (non-cumulative, last = +Inf)], sum, count
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)  # buckets are "less than or equal" upper bounds
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[slot] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        out = self.header()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                out.append(f"{self.name}_bucket{_fmt_labels(key, ('le', _fmt_value(bound)))} {running}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {running}")
        return out


class ServiceMetrics:
    """The service's metrics, one instance per app."""

    def __init__(self) -> None:
        self.requests = Counter("polymodal_http_requests_total", "HTTP requests by method, route and status.",
                                ("method", "route", "status"))
        self.latency = Histogram("polymodal_http_request_duration_seconds", "HTTP request latency by route.",
                                 ("method", "route"))
        self.batch_size = Histogram("polymodal_embed_batch_size", "Items per model.embed call (dynamic batching).",
                                    ("modality",), BATCH_BUCKETS)
        self.batch_requests = Histogram("polymodal_embed_batch_requests", "Requests merged into one model call.",
                                        ("modality",), BATCH_BUCKETS)
        self.model_latency = Histogram("polymodal_model_call_duration_seconds", "Duration of one model.embed call.",
                                       ("modality",))
        self.model_cpu = Counter("polymodal_model_call_cpu_seconds_total", "CPU time of the embedding worker thread "
                                 "inside model.embed calls (torch's own intra-op threads not included).",
                                 ("modality",))
        self.queue_depth = Gauge("polymodal_embed_queue_depth", "Embedding requests waiting for the model.")
        self.rejected = Counter("polymodal_embed_rejected_total", "Embedding requests refused because the queue "
                                "was full (answered 503).")
        self.queue_depth.set(0)
        self.rejected.inc(0)

    def all(self) -> list[_Metric]:
        return [self.requests, self.latency, self.batch_size, self.batch_requests, self.model_latency,
                self.model_cpu, self.queue_depth, self.rejected]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines += metric.render()
        return "\n".join(lines) + "\n"
