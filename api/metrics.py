"""Prometheus metrics, in a registry of the app's own (so several apps can live in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bertheads_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bertheads_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter(
            "bertheads_texts_total",
            "Texts embedded, by where the vector came from",
            ["source"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bertheads_encode_batch_texts",
            "Texts per coalesced encode call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "bertheads_encode_queue_texts", "Texts waiting to be encoded", registry=self.registry
        )
        self.head_version = Gauge(
            "bertheads_head_version", "Live version of each head", ["head"], registry=self.registry
        )
        self.train_seconds = Histogram(
            "bertheads_train_seconds",
            "Head training time",
            ["head"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.cache_up = Gauge("bertheads_cache_up", "1 while Redis answers", registry=self.registry)
        self.cache_rejected = Gauge(
            "bertheads_cache_rejected_values",
            "Cached vectors refused since start (wrong length, NaN or Inf), deleted and re-encoded",
            registry=self.registry,
        )
        self.trains_running = Gauge(
            "bertheads_trains_running",
            "Trains holding a slot of MAX_CONCURRENT_TRAINS",
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
