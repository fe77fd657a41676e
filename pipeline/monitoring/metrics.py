"""A server's metrics for Prometheus (prometheus-client), and the middleware serving /metrics."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own switch
METRICS_PATH = "/metrics"
OTHER_ROUTE = "other"  # any path no route serves: one series, whatever clients ask for
# Seconds. One image is scored in about a millisecond; a full body of images takes seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The series of one server process, in a registry of its own (a process may build apps)."""

    def __init__(self, class_names: list[str], model: str, version: str, shadow: str) -> None:
        self.class_names, self.shadow_name = class_names, shadow
        self.registry = CollectorRegistry()

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, labels, registry=self.registry)

        self.requests = counter(
            "http_requests", "HTTP requests answered, by route and status", ("route", "status")
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = counter(
            "model_predictions", "Images scored, by predicted class", ("class",)
        )
        # every class's series exists from the start, at 0; its child found by index
        self.by_class = [self.predictions.labels(name) for name in class_names]
        # The version served: prometheus-client's Info does not work in multiprocess mode; a
        # gauge of 1 named *_info is what Info exposes anyway.
        self.info = Gauge(
            "model_info",
            "The model served: as asked, the version it named, the shadow",
            ["model", "version", "shadow"],
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.info.labels(model, version, shadow).set(1)
        self.shadow = counter(
            "shadow_predictions", "Images the shadow scored, by agreement", ("agreement",)
        )
        self.shadow_dropped = counter(
            "shadow_dropped", "Images the shadow did not score: its queue was full"
        )
        self.shed = counter(
            "requests_shed",
            "Requests answered 503 at once: as many as the server admits were waiting",
        )
        self.log_dropped = counter(
            "prediction_log_dropped",
            "Images scored but not logged: the log could not be written, or its queue was full",
        )
        self.endpoint = make_asgi_app(self.exposed())
        self.series: dict[tuple[str, int], tuple] = {}  # (route, status) → (counter, histogram)

    def exposed(self) -> CollectorRegistry:
        """This registry, or in multiprocess mode every process's files."""
        if not os.environ.get(MULTIPROCESS_ENV):
            return self.registry
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)
        return everyone

    def serving(self, before: Any, after: Any) -> None:
        """The model served moved (both have `model`, as asked, and `pinned`, the version)."""
        self.info.labels(before.model, before.pinned, self.shadow_name).set(0)
        self.info.labels(after.model, after.pinned, self.shadow_name).set(1)

    def count_predictions(self, predicted: np.ndarray) -> None:
        counts = np.bincount(predicted, minlength=len(self.class_names))  # (classes,)
        for index in np.flatnonzero(counts):
            self.by_class[index].inc(int(counts[index]))

    def count_shadow(self, predicted: np.ndarray, shadow_predicted: np.ndarray) -> None:
        agree = int((predicted == shadow_predicted).sum())
        self.shadow.labels("agree").inc(agree)
        self.shadow.labels("disagree").inc(len(predicted) - agree)

    def answered(self, route: str, status: int, seconds: float) -> None:
        """One request answered: counted by route and status, timed by route."""
        series = self.series.get((route, status))
        if series is None:  # labels() costs a lookup under a lock: once per route and status
            series = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self.series[route, status] = series
        series[0].inc()
        series[1].observe(seconds)

    def middleware(self, app: Any, routes: Iterable[str]) -> Callable:
        """ASGI middleware: every HTTP request counted and timed; GET /metrics answered here."""
        routes = {*routes, METRICS_PATH}

        async def measured(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"]
            route = path if path in routes else OTHER_ROUTE
            target = self.endpoint if path == METRICS_PATH else app
            started, status = time.perf_counter(), [500]  # an app that raises sent no status

            async def sending(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await target(scope, receive, sending)
            finally:
                self.answered(route, status[0], time.perf_counter() - started)

        return measured


@contextlib.contextmanager
def shared_between_processes() -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the processes started in the block, unless set."""
    if os.environ.get(MULTIPROCESS_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="pipeline-metrics-")
    os.environ[MULTIPROCESS_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
