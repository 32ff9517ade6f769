"""Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021) on a frozen model.

Prompt tuning learns n virtual token embeddings put before the input embeddings; only the
input layer changes. Prefix tuning learns P keys and values in *every* attention layer that
every query attends to, as if P tokens had come before the sequence.

Prompt tuning wraps the model (`PromptTuned`): the virtual tokens lengthen the sequence,
so the wrapper feeds the model's body (`Transformer.hidden`) input embeddings, virtual
then real. Virtual tokens sit at positions 0..n-1 and the real ones at n..n+T-1; hidden
states and logits are returned for the real tokens only. Packed rows (segment_ids) work:
each segment sees the virtual tokens as if it ran alone. Forward without a KV cache only
(training, scoring); generation with virtual tokens is not supported yet.

Prefix tuning wraps every layer's attention in a `PrefixAttention`, which runs the
attention's own steps (`project`, then `attend`) with the trained keys and values put
before the sequence's. It works with and without a KV cache (the prefix is never written
to the cache; it is put before the cached keys at every step) and with packed rows.

Deviation: Li & Liang reparametrize the prefix through an MLP during training for
stability; we train the keys and values directly (PEFT's prefix_projection=False). They are
initialised, as the paper advises, from the model's own keys and values for real tokens
(random vocabulary rows, or `init_ids`), not from noise.

>>> from ember.model import ModelConfig, Transformer
>>> m = apply_prompt_tuning(Transformer(ModelConfig.tiny()), n_virtual=4)
>>> m(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 256])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ember.model.transformer import segment_positions
from ember.peft.adapter import Adapter, base_model, freeze_base


def _init_ids(n: int, vocab_size: int, ids: list[int] | None, what: str) -> torch.Tensor:
    """n token ids: `ids` repeated to length n (as PEFT does with init text), or random rows."""
    if ids is None:
        return torch.randint(vocab_size, (n,))
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    if len(ids) == 0 or any(not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
        raise ValueError(f"{what} must be a non-empty list of token ids in [0, {vocab_size}), got {ids!r}")
    return torch.tensor(ids * -(-n // len(ids)))[:n]


# ---- prompt tuning ------------------------------------------------------------------------------


class PromptTuned(Adapter):
    """A frozen Transformer with `n_virtual` trained embeddings before every input.

    >>> from ember.model import ModelConfig, Transformer
    >>> PromptTuned(Transformer(ModelConfig.tiny()), 3).embeddings.shape
    torch.Size([3, 64])
    """

    kind = "prompt"

    def __init__(self, model: nn.Module, n_virtual: int, init_ids: list[int] | None = None):
        super().__init__()
        if isinstance(n_virtual, bool) or not isinstance(n_virtual, int) or n_virtual < 0:
            raise ValueError(f"n_virtual must be an int ≥ 0, got {n_virtual!r}")
        self.model, self.n_virtual = model, n_virtual
        ids = _init_ids(n_virtual, model.config.vocab_size, init_ids, "init_text_ids")
        device = model.norm.weight.device
        with torch.no_grad():  # Lester et al.: start from vocabulary embeddings
            rows = model.tok_embeddings(ids.to(device)).float()  # (n, D)
        self.embeddings = nn.Parameter(rows.clone())  # fp32 whatever the model dtype

    @property
    def config(self):
        return self.model.config

    def forward(self, ids: torch.Tensor, cache=None, input_pos=None, logits_index=None, kv_len=None,
                segment_ids=None, logits_mask=None) -> torch.Tensor:
        """ids (B, T) → logits (B, T, V) for the real tokens (`lm_head` selects as the model's)."""
        if self.disabled:
            return self.model(ids, cache, input_pos, logits_index, kv_len, segment_ids, logits_mask)
        return self.model.lm_head(self.hidden(ids, cache, input_pos, kv_len, segment_ids), logits_index, logits_mask)

    def hidden(self, ids: torch.Tensor, cache=None, input_pos=None, kv_len=None, segment_ids=None) -> torch.Tensor:
        """ids (B, T) → the body's final-normed states (B, T, D) of the real tokens, the
        virtual tokens before them."""
        if self.disabled:
            return self.model.hidden(ids, cache, input_pos, kv_len, segment_ids)
        if cache is not None or input_pos is not None:
            raise ValueError("prompt tuning runs forwards without a KV cache only (no generation yet)")
        m, n = self.model, self.n_virtual
        B, T = ids.shape
        if n + T > m.config.max_seq_len:
            raise ValueError(f"{n} virtual + {T} tokens is longer than max_seq_len {m.config.max_seq_len}")
        x = m.tok_embeddings(ids)  # (B, T, D)
        x = torch.cat((self.embeddings.to(x.dtype).expand(B, n, -1), x), dim=1)  # (B, n + T, D)
        pos, mask = self._packed(segment_ids) if segment_ids is not None else (None, None)
        return m.hidden(inputs_embeds=x, positions=pos, mask=mask)[:, n:]  # (B, T, D): the real tokens

    def _packed(self, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, n + T) and mask (B, 1, n + T, n + T) for packed rows: every segment
        sees the n virtual tokens and itself, at positions n, n + 1, ... The virtual tokens
        see only each other, so their states are the same for every segment and one copy
        serves them all: exactly each sequence run alone behind its own virtual tokens."""
        if not self.config.causal:
            raise ValueError("packed rows (segment_ids) with prompt tuning need a causal model")
        n, (B, T) = self.n_virtual, seg.shape
        seg_pos, seg_mask = segment_positions(seg, True)  # (B, T), (B, 1, T, T)
        virt = torch.arange(n, device=seg.device).expand(B, n)
        pos = torch.cat((virt, seg_pos + n), dim=1)  # (B, n + T)
        mask = torch.zeros(B, 1, n + T, n + T, dtype=torch.bool, device=seg.device)
        mask[:, :, :n, :n] = torch.ones(n, n, dtype=torch.bool, device=seg.device).tril()
        mask[:, :, n:, :n] = True
        mask[:, :, n:, n:] = seg_mask
        return pos, mask


def apply_prompt_tuning(model: nn.Module, n_virtual: int, init_text_ids: list[int] | None = None) -> PromptTuned:
    """Freeze the model and wrap it with `n_virtual` trainable virtual tokens.

    init_text_ids: the virtual tokens start as these tokens' embeddings (repeated to length
    n_virtual; e.g. the ids of a task description), else as random vocabulary rows (seed
    torch for a reproducible start). Adapters already on the model (LoRA, prefix) stay
    trainable.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = apply_prompt_tuning(Transformer(ModelConfig.tiny()), 2, init_text_ids=[5])
    >>> [n for n, p in m.named_parameters() if p.requires_grad]
    ['embeddings']
    """
    if getattr(model, "kind", "") == "prompt":
        raise ValueError("the model is already prompt-tuned")
    wrapped = PromptTuned(model, n_virtual, init_text_ids)
    freeze_base(wrapped)
    return wrapped


# ---- prefix tuning ------------------------------------------------------------------------------


class PrefixKV(Adapter):
    """One layer's trained prefix: keys and values (Hkv, P, Dh); call(B) → each (B, Hkv, P, Dh).

    >>> PrefixKV(torch.zeros(2, 3, 16), torch.zeros(2, 3, 16))(4)[0].shape
    torch.Size([4, 2, 3, 16])
    """

    kind = "prefix"

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys = nn.Parameter(keys.detach().float().clone())
        self.values = nn.Parameter(values.detach().float().clone())

    def forward(self, B: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.disabled:
            return None
        return self.keys.expand(B, -1, -1, -1), self.values.expand(B, -1, -1, -1)


class PrefixAttention(Adapter):
    """An attention (`base`) whose every query also sees P trained keys and values
    (`prefix`, a PrefixKV) before the sequence's.

    >>> from ember.model import ModelConfig, Transformer
    >>> att = Transformer(ModelConfig.tiny()).layers[0].attention
    >>> PrefixAttention(att, PrefixKV(torch.zeros(2, 3, 16), torch.zeros(2, 3, 16)))(torch.zeros(1, 4, 64)).shape
    torch.Size([1, 4, 64])
    """

    kind = "prefix"

    def __init__(self, base: nn.Module, prefix: PrefixKV):
        super().__init__()
        self.base, self.prefix = base, prefix

    def forward(self, x, rope=None, cache=None, layer_idx=0, input_pos=None, mask=None):
        """As Attention.forward: x (B, T, D) → (B, T, D)."""
        B, T, _ = x.shape
        kv = self.prefix(B)
        if kv is None:  # switched off (adapters_disabled)
            return self.base(x, rope, cache, layer_idx, input_pos, mask)
        kv_len = None if mask is None else mask.shape[-1]
        q, k, v = self.base.project(x, rope, cache, layer_idx, input_pos, kv_len)  # k, v (B, Hkv, kv_len, Dh)
        # Prefix keys are free parameters, not rotated; every query sees all P of them.
        P = kv[0].shape[2]
        k, v = torch.cat((kv[0].to(k.dtype), k), dim=2), torch.cat((kv[1].to(v.dtype), v), dim=2)
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device)
            mask = mask.tril() if self.base.causal else mask  # (T, T)
        mask = torch.cat((mask.new_ones(*mask.shape[:-1], P), mask), dim=-1)  # (.., T, P + kv_len)
        return self.base.attend(q, k, v, mask)


def _layer_kv(model: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (k, v) (Hkv, P, Dh) for the tokens `ids` (P,), run as one sequence.

    Keys are taken before RoPE: a prefix key has no position."""
    got = []

    def grab(attn, args, _out):
        x = args[0]  # (1, P, D): the normed input of the attention
        _, k, v = attn.qkv(x)  # (1, P, Hkv·Dh)
        shape = (x.shape[1], attn.n_kv_heads, attn.head_dim)
        got.append((k[0].view(shape).transpose(0, 1), v[0].view(shape).transpose(0, 1)))

    hooks = [layer.attention.register_forward_hook(grab) for layer in model.layers]
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for h in hooks:
            h.remove()
    return got


def apply_prefix_tuning(model: nn.Module, n_prefix: int, init_ids: list[int] | None = None) -> nn.Module:
    """Freeze the model and wrap every attention layer in a PrefixAttention with `n_prefix`
    trainable keys and values.

    They start as the model's own keys and values for `init_ids` (repeated to n_prefix)
    or random vocabulary tokens (Li & Liang 2021 §7.2: real-word activations train better
    than random init). Adapters already on the model stay trainable.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = apply_prefix_tuning(Transformer(ModelConfig.tiny()), 4)
    >>> m.layers[0].attention.prefix.keys.shape
    torch.Size([2, 4, 16])
    """
    if isinstance(n_prefix, bool) or not isinstance(n_prefix, int) or n_prefix < 1:
        raise ValueError(f"n_prefix must be a positive int, got {n_prefix!r}")
    root = base_model(model)
    if any(isinstance(layer.attention, PrefixAttention) for layer in root.layers):
        raise ValueError("the model already has prefixes")
    if n_prefix > root.config.max_seq_len:
        raise ValueError(f"n_prefix {n_prefix} is longer than max_seq_len {root.config.max_seq_len}")
    ids = _init_ids(n_prefix, root.config.vocab_size, init_ids, "init_ids")
    kvs = _layer_kv(root, ids.to(root.norm.weight.device))
    for layer, (k, v) in zip(root.layers, kvs, strict=True):
        layer.attention = PrefixAttention(layer.attention, PrefixKV(k, v))
    freeze_base(model)
    return model
