"""Load: 64 concurrent streaming clients against a live `ember serve` app, several rounds.

The server (a tiny random model wearing SmolLM2's tokenizer, max batch 8, queue 64) runs
under uvicorn in a thread of this process; the clients are asyncio + httpx. Every round
must finish in bounded time with zero errors and every stream ending in `data: [DONE]`,
and the process must not grow: RSS after the last round is compared with RSS after the
first (which has paid for every one-off allocation: caches, buffers, imports).
"""

import asyncio
import gc
import json
import time

import pytest
from infer_helpers import serve_tiny

CLIENTS = 64
ROUNDS = 4
MAX_TOKENS = 16
ROUND_TIMEOUT_S = 120  # ~2 s on an idle 2-core machine; generous for a loaded one
# Allocator noise over a few rounds is a few MB; a leak of one prompt's KV cache, text or
# event queue per request would be 64 per round and show well above this.
RSS_TOLERANCE_MB = 24


@pytest.fixture(scope="module")
def server(smollm2_tokenizer):
    live = serve_tiny(smollm2_tokenizer, max_batch_size=8, max_queue=CLIENTS)
    yield live.url, live.app.state.ember.engine
    live.close()


async def stream_one(client, i: int) -> dict:
    """One streaming chat request; returns its token count and whether [DONE] ended it."""
    body = {"model": "tiny-smollm2", "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": i,
            "messages": [{"role": "user", "content": f"Client {i}: tell me about the number {i * 7}."}],
            "stream": True, "stream_options": {"include_usage": True}}
    out = {"done": False, "tokens": 0, "error": None, "after_done": False}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            out["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
            return out
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if out["done"]:
                out["after_done"] = True  # nothing may follow [DONE]
            elif data == "[DONE]":
                out["done"] = True
            else:
                event = json.loads(data)
                if "error" in event:
                    out["error"] = event["error"].get("message", str(event["error"]))
                if event.get("usage"):
                    out["tokens"] = event["usage"]["completion_tokens"]
    return out


async def one_round(url: str, offset: int) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=ROUND_TIMEOUT_S, limits=limits) as client:
        t0 = time.perf_counter()
        coros = [stream_one(client, offset + i) for i in range(CLIENTS)]
        results = await asyncio.wait_for(asyncio.gather(*coros), ROUND_TIMEOUT_S)
        return results, time.perf_counter() - t0


def rss_mb() -> float:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
def test_64_streaming_clients_no_errors_no_growth(server):
    url, engine = server
    rss, lines = [], []
    for r in range(ROUNDS):
        results, wall = asyncio.run(one_round(url, r * CLIENTS))
        errors = [x["error"] for x in results if x["error"]]
        assert not errors, f"round {r + 1}: {len(errors)} errors, e.g. {errors[:3]}"
        assert all(x["done"] for x in results), f"round {r + 1}: a stream ended without [DONE]"
        assert not any(x["after_done"] for x in results), "data after [DONE]"
        assert all(x["tokens"] > 0 for x in results), "a stream reported no completion tokens"
        assert not engine.has_unfinished(), "the engine kept requests after every stream ended"
        rss.append(rss_mb())
        tokens = sum(x["tokens"] for x in results)
        lines.append(f"round {r + 1}: {CLIENTS} streams, {tokens} tokens in {wall:.2f} s "
                     f"({tokens / wall:.0f} tok/s), RSS {rss[-1]:.1f} MB")
    print("\n" + "\n".join(lines))
    growth = rss[-1] - rss[0]
    assert growth < RSS_TOLERANCE_MB, (
        f"RSS grew {growth:.1f} MB from round 1 to round {ROUNDS} (tolerance {RSS_TOLERANCE_MB} MB): {rss}"
    )
