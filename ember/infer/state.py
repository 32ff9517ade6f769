"""What the server's handlers share: the engine and its worker thread, the limits, and the
Prometheus counters behind /metrics. Its own module so that the routes (server.py) and
the generation endpoints (completions.py) both import it and not each other."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from .engine import Engine
from .worker import EngineWorker

# A full 8k-token context is ~32 KB of text, ~200 KB as JSON \u escapes; a batch of 64
# such prompts (lm_eval's completions) fits too. A bigger body is refused unread.
MAX_BODY_BYTES = 8 * 2**20


ENDPOINTS = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/tokenize",
    "/detokenize", "/metrics", "/",
)


class Metrics:
    """Prometheus counters: requests by endpoint and status, latency histograms, tokens."""

    BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self):
        self.started = int(time.time())
        self.requests: Counter = Counter()  # (endpoint, status) → count
        self.latency: dict[str, list] = {}  # endpoint → [count per bucket..., sum, count]
        self.prompt_tokens = self.generation_tokens = self.embedding_tokens = 0

    def tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens += prompt
        self.generation_tokens += generated

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        self.requests[endpoint, status] += 1
        h = self.latency.setdefault(endpoint, [0] * (len(self.BUCKETS) + 2))
        for b, le in enumerate(self.BUCKETS):
            h[b] += seconds <= le
        h[-2] += seconds
        h[-1] += 1

    def render(self, worker: EngineWorker) -> str:
        lines = [
            "# HELP ember_requests_total HTTP requests by endpoint and status.",
            "# TYPE ember_requests_total counter",
        ]
        for (ep, status), n in sorted(self.requests.items()):
            lines.append(f'ember_requests_total{{endpoint="{ep}",status="{status}"}} {n}')
        for name, value, kind, doc in [
            ("ember_requests_running", worker.running, "gauge", "Engine requests in a batch slot."),
            ("ember_requests_waiting", worker.waiting, "gauge", "Engine requests queued for a slot."),
            ("ember_prompt_tokens_total", self.prompt_tokens, "counter", "Prompt tokens processed."),
            ("ember_generation_tokens_total", self.generation_tokens, "counter", "Tokens generated."),
            ("ember_embedding_tokens_total", self.embedding_tokens, "counter", "Tokens embedded."),
        ]:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP ember_request_duration_seconds Time from request to last byte.",
            "# TYPE ember_request_duration_seconds histogram",
        ]
        for ep, h in sorted(self.latency.items()):
            for le, n in zip(self.BUCKETS, h):
                lines.append(f'ember_request_duration_seconds_bucket{{endpoint="{ep}",le="{le}"}} {n}')
            lines.append(f'ember_request_duration_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {h[-1]}')
            lines.append(f'ember_request_duration_seconds_sum{{endpoint="{ep}"}} {h[-2]:.6f}')
            lines.append(f'ember_request_duration_seconds_count{{endpoint="{ep}"}} {h[-1]}')
        return "\n".join(lines) + "\n"


@dataclass
class ServerState:
    engine: Engine
    worker: EngineWorker
    model_id: str
    max_queue: int
    metrics: Metrics
    max_body_bytes: int = MAX_BODY_BYTES
    in_flight: int = 0  # engine requests submitted and not finished (event-loop side only)
    # The encoder behind /v1/embeddings, if one is served: an embeddings_api.EmbeddingModel
    # (not named here: that module imports this one).
    embeddings: object | None = None
    # The retriever of `"rag"` chat requests (ember.rag.answer.ChatRetriever), if --rag is served.
    rag: object | None = None

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def ctx(self) -> int:
        return self.engine.max_seq_len
