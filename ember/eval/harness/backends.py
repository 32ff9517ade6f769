"""Where log-likelihoods and generations come from: the in-process engine, or any
OpenAI-compatible server (`ember serve`, vLLM, llama.cpp's server, ...).

Both take token ids, so both score exactly the same tokens. `score(groups)` takes
(context ids, [continuation ids, ...]) groups and returns, per continuation,
(Σ log p(continuation token | everything before it), whether every token was the argmax).

- `EngineBackend` runs a group's context once into a KV cache, copies that cache row to
  one row per continuation, and runs all continuations in one batched forward from it
  (`shared_prefill=False`: one full forward per continuation, the simple reference).
- `OpenAIBackend` does what lm-eval's `local-completions` does: POST /v1/completions with
  the token ids as the prompt, `echo: true, logprobs: 1, max_tokens: 1, temperature: 0`,
  and reads `token_logprobs` of the continuation's positions; greedy when each token's
  log-prob is the top one. A server that echoes no prompt log-probs is an error.

    >>> EngineBackend(model, tok).score([(tok.encode("The sky is"), [tok.encode(" blue")])])  # doctest: +SKIP
    [[(-2.31, True)]]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import torch

from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.model.kv_cache import KVCache

Group = tuple[list[int], list[list[int]]]
SEED = 1234  # lm-eval's seed for sampled generations


def cut_at_stops(text: str, until: list[str]) -> str:
    """The text before the first stop string (lm-eval cuts every response so).

    >>> cut_at_stops("42\\n\\nQ: next", ["\\n\\n"])
    '42'
    """
    for stop in until:
        text = text.split(stop)[0]
    return text


class EngineBackend:
    """Scoring and generation with a model in this process."""

    def __init__(self, model, tokenizer, batch_size: int = 8, shared_prefill: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = model.config.max_seq_len
        self.batch_size, self.shared_prefill = batch_size, shared_prefill
        self.name = "engine"
        self._engine = None

    @torch.inference_mode()
    def score(self, groups: list[Group]) -> list[list[tuple[float, bool]]]:
        # a recipe may evaluate mid-run: the modules that were training get their mode back
        training = [m for m in self.model.modules() if m.training]
        for m in training:
            m.training = False
        try:
            # one continuation (a rolling window) has nothing to share: one plain causal forward
            return [(self._score_shared if self.shared_prefill and len(conts) > 1 else self._score_naive)(ctx, conts)
                    for ctx, conts in groups]
        finally:
            for m in training:
                m.training = True

    def _device(self):
        return next(self.model.parameters()).device

    def _score_naive(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        out = []
        for cont in conts:
            ids = torch.tensor([ctx + cont[:-1]], device=self._device())  # [1, T]: the last token is never fed
            logp = torch.log_softmax(self.model(ids)[0, len(ctx) - 1 :].float(), -1)  # [len(cont), V]
            out.append(_sum_and_greedy(logp, torch.tensor(cont, device=logp.device)))
        return out

    def _score_shared(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        """One forward over the context, one over all continuations batched (right-padded:
        causal attention keeps a row's pads from its real tokens)."""
        n, k, L = len(ctx), len(conts), max(len(c) for c in conts)
        dev = self._device()
        cache = KVCache.for_model(self.model, k, n + L)
        pos = torch.arange(n, device=dev)[None]  # [1, n]
        first = self.model(torch.tensor([ctx], device=dev), cache.rows(0, 1), pos,
                           logits_index=torch.tensor([n - 1], device=dev))[0]  # [1, V]: predicts cont[0]
        for buf in cache.k + cache.v:  # (k, Hkv, n + L, Dh): every row starts from the context's K/V
            buf[1:, :, :n] = buf[0:1, :, :n]
        if L > 1:  # feed cont[:-1] at positions n.. ; its logits predict cont[1:]
            ids = torch.zeros(k, L - 1, dtype=torch.long, device=dev)
            for i, c in enumerate(conts):
                ids[i, : len(c) - 1] = torch.tensor(c[:-1], device=dev)
            rest = self.model(ids, cache, torch.arange(n, n + L - 1, device=dev).expand(k, -1))  # [k, L-1, V]
        out = []
        for i, c in enumerate(conts):
            logits = first if len(c) == 1 else torch.cat([first, rest[i, : len(c) - 1]])  # [len(c), V]
            out.append(_sum_and_greedy(torch.log_softmax(logits.float(), -1), torch.tensor(c, device=dev)))
        return out

    def generate(self, prompts: list[list[int]], gen: dict) -> list[str]:
        if self._engine is None:
            self._engine = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size)
        params = _sampling(gen)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            results = self._engine.generate(prompts[i : i + self.batch_size], params)
            out += [cut_at_stops(r.text, gen["until"]) for r in results]
        return out


def _sum_and_greedy(logp: torch.Tensor, targets: torch.Tensor) -> tuple[float, bool]:
    """logp [T, V] predicting targets [T] → (Σ log p(target), every target the argmax)."""
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return picked.sum().item(), bool((logp.argmax(-1) == targets).all())


def _sampling(gen: dict) -> SamplingParams:
    temperature = gen["temperature"] if gen["do_sample"] else 0.0
    return SamplingParams(temperature=temperature, max_tokens=gen["max_gen_toks"], stop=tuple(gen["until"]),
                          seed=SEED if temperature > 0 else None)


class OpenAIBackend:
    """Scoring and generation through an OpenAI-compatible server's /v1/completions.

    url: the server (`http://127.0.0.1:8000` or `.../v1`); model_name: the `model` field
    (default: the first of GET /v1/models); tokenizer: the served model's, to make ids.
    """

    def __init__(self, url: str, tokenizer, model_name: str | None = None, max_length: int = 2048,
                 batch_size: int = 8, timeout: float = 600.0):
        base = url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        if not self.base.startswith(("http://", "https://")):
            raise ValueError(f"backend {url!r}: give 'engine' or an http(s):// URL")
        self.tokenizer, self.max_length, self.batch_size, self.timeout = tokenizer, max_length, batch_size, timeout
        self.model_name = model_name or self._first_model()
        self.name = self.base

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ValueError(f"{self.base}{path}: HTTP {e.code}: {detail[:300]}") from None

    def _first_model(self) -> str:
        models = self._request("/v1/models").get("data") or []
        if not models:
            raise ValueError(f"{self.base}/v1/models lists no model; name one")
        return models[0]["id"]

    def score(self, groups: list[Group]) -> list[list[tuple[float, bool]]]:
        return [self._score_group(ctx, conts) for ctx, conts in groups]

    def _score_group(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        body = {"model": self.model_name, "prompt": [ctx + c for c in conts], "max_tokens": 1,
                "temperature": 0, "logprobs": 1, "echo": True, "seed": SEED}
        choices = sorted(self._request("/v1/completions", body).get("choices") or [], key=lambda c: c["index"])
        if len(choices) != len(conts):
            raise ValueError(f"{self.base}: {len(choices)} choices for {len(conts)} prompts")
        out = []
        for choice, cont in zip(choices, conts):
            lp = choice.get("logprobs") or {}
            got = (lp.get("token_logprobs") or [])[len(ctx) : len(ctx) + len(cont)]
            top = (lp.get("top_logprobs") or [])[len(ctx) : len(ctx) + len(cont)]
            if len(got) != len(cont) or any(x is None for x in got):
                raise ValueError(f"{self.base} returned no prompt log-probs (echo with logprobs); "
                                 "log-likelihood scoring needs a server that reports them")
            greedy = len(top) == len(got) and all(t and x >= max(t.values()) for x, t in zip(got, top))
            out.append((float(sum(got)), greedy))
        return out

    def generate(self, prompts: list[list[int]], gen: dict) -> list[str]:
        params = _sampling(gen)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            body = {"model": self.model_name, "prompt": prompts[i : i + self.batch_size],
                    "max_tokens": params.max_tokens, "temperature": params.temperature,
                    "stop": list(gen["until"])[:4], "seed": SEED}
            choices = sorted(self._request("/v1/completions", body)["choices"], key=lambda c: c["index"])
            out += [cut_at_stops(c["text"], gen["until"]) for c in choices]
        return out
