"""Encoder pre-training objectives as pure losses over the batches of ember.data.objectives.

- `mlm_loss`: BERT's masked LM (Devlin et al. 2019 §3.1): cross-entropy at masked positions.
- `Electra` + `electra_loss`: ELECTRA (Clark et al. 2020 §2, eq. 1–2): a small MLM
  generator and a discriminator trained jointly on L_MLM + λ·L_Disc; the discriminator
  (`Electra.body`) is the model kept.
- `TwoStream` + `plm_loss`: XLNet's permutation LM (Yang et al. 2019 §2.3, eq. 4–5) with
  two-stream attention, built on the Transformer's blocks through the attention mask that
  `Transformer.hidden` takes: the query stream rides in the same forward as extra rows.

Every model here has `body`, the encoder to keep and fine-tune (for MLM, the model itself).

>>> from ember.model import ModelConfig, Transformer
>>> from ember.data.objectives import MaskedLM
>>> model = Transformer(ModelConfig.tiny(causal=False))
>>> batch = MaskedLM(mask_id=1, vocab_size=256)(torch.randint(2, 256, (2, 16)), torch.Generator())
>>> loss, metrics = mlm_loss(model, batch)
>>> loss.item() > 0
True
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.data.objectives import IGNORE, replace_tokens
from ember.model.config import ModelConfig
from ember.model.heads import ScalarHead, hidden_states
from ember.model.transformer import Transformer

__all__ = ["Electra", "TwoStream", "electra_loss", "encoder_body", "mlm_loss", "plm_loss"]


def encoder_body(model: nn.Module) -> Transformer:
    """The encoder an objective trains: `model.body` for ELECTRA and XLNet, else the model."""
    return getattr(model, "body", model)


def _key_mask(batch: dict) -> torch.Tensor | None:
    """The batch's attention_mask, or None when no row is padded (SDPA's fastest path)."""
    real = batch.get("attention_mask")
    return None if real is None or bool(real.all()) else real


def _mlm_logits(model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, V) at the N labelled positions only, and their targets (N,)."""
    labelled = batch["labels"] != IGNORE  # (B, T)
    h = hidden_states(model, batch["input_ids"], _key_mask(batch))  # (B, T, D)
    return model.lm_head(h, logits_mask=labelled), batch["labels"][labelled]


def mlm_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Masked-LM loss of BERT (Devlin et al. 2019 §3.1): mean cross-entropy of the original
    token at each masked position, in fp32. The LM head runs only at those positions.
    Metrics: mlm_acc, the share of masked tokens predicted exactly (argmax)."""
    logits, targets = _mlm_logits(model, batch)  # (N, V), (N,)
    loss = F.cross_entropy(logits.float(), targets)
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, {"mlm_acc": acc}


class Electra(nn.Module):
    """ELECTRA's generator and discriminator (Clark et al. 2020 §2–3.2) in one module.

    The generator is an MLM Transformer smaller than the discriminator. Deviation: it is
    smaller in depth (generator_layers), not in width as in the paper, so that the token
    (and learned position) embeddings tie between the two without a projection (§3.2 ties
    them; the paper's small generators reach their width through an embedding projection).
    The discriminator's head is a Linear(D, 1) per token (`disc_head`).

    >>> m = Electra(ModelConfig.tiny(causal=False), generator_layers=1)
    >>> m.generator.tok_embeddings is m.body.tok_embeddings, len(m.generator.layers)
    (True, 1)
    """

    def __init__(self, cfg: ModelConfig, generator_layers: int = 1, tie_embeddings: bool = True):
        super().__init__()
        if not 1 <= generator_layers <= cfg.n_layers:
            raise ValueError(f"generator_layers must be in 1..{cfg.n_layers} (the discriminator's), "
                             f"got {generator_layers}")
        self.body = Transformer(cfg)  # the discriminator: what is kept
        self.generator = Transformer(ModelConfig.from_dict({**cfg.to_dict(), "n_layers": generator_layers}))
        self.disc_head = ScalarHead(cfg.d_model)
        if tie_embeddings:
            self.generator.tok_embeddings = self.body.tok_embeddings
            if cfg.pos_emb == "learned":
                self.generator.pos_embeddings = self.body.pos_embeddings
            self.generator.tie_weights()

    @property
    def config(self) -> ModelConfig:
        return self.body.config


def electra_loss(model: Electra, batch: dict, disc_weight: float = 50.0) -> tuple[torch.Tensor, dict]:
    """ELECTRA's joint loss (Clark et al. 2020 eq. 1–2): L_MLM(generator) + λ·L_Disc with
    λ = 50 (§3.1). The generator's samples x̂ ~ p_G at the masked positions (sampled, not
    argmax; no gradient flows through them to the generator) replace the originals; the
    discriminator's BCE runs over every real position, target 1 where the token was replaced
    (a sample equal to the original counts as original). Both losses in fp32.

    Metrics: gen_loss, disc_loss, disc_acc (per-token), replaced (share of real tokens).
    """
    gen_logits, targets = _mlm_logits(model.generator, batch)  # (N, V), (N,)
    gen_loss = F.cross_entropy(gen_logits.float(), targets)
    with torch.no_grad():
        sampled = torch.multinomial(F.softmax(gen_logits.float(), dim=-1), 1).squeeze(-1)  # (N,)
        full = batch["input_ids"].clone()
        full[batch["labels"] != IGNORE] = sampled
        corrupted, replaced = replace_tokens(batch, full)  # (B, T) each
    real = batch.get("attention_mask")
    real = torch.ones_like(replaced) if real is None else real.bool()
    h = hidden_states(model.body, corrupted, _key_mask(batch))  # (B, T, D)
    scores = model.disc_head(h)  # (B, T) fp32 logits of "replaced"
    disc_loss = F.binary_cross_entropy_with_logits(scores[real], replaced[real].float())
    with torch.no_grad():
        acc = ((scores[real] > 0) == replaced[real]).float().mean()
        frac = replaced[real].float().mean()
    loss = gen_loss + disc_weight * disc_loss
    return loss, {"gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach(), "disc_acc": acc, "replaced": frac}


class TwoStream(nn.Module):
    """XLNet's two-stream attention (Yang et al. 2019 §2.3) on an ordinary Transformer body.

    One forward holds T content rows (the tokens) and n query rows (one per target, input: a
    trained vector w at the target's position, eq. 4's g⁽⁰⁾ = w). The attention mask (B, 1,
    T + n, T + n) lets content rows see content rows by the content mask and query rows see
    content rows by the query mask; no row sees a query row. So in every layer the query
    stream reads the content stream's keys and values of that layer, and the content stream
    never depends on the query stream: exactly the two streams, with shared weights, as
    in the paper. The body's max_seq_len must cover T + n rows (positions stay < T).

    >>> m = TwoStream(Transformer(ModelConfig.tiny(causal=False)))
    >>> m.mask_emb.shape
    torch.Size([64])
    """

    def __init__(self, body: Transformer):
        super().__init__()
        self.body = body
        self.mask_emb = nn.Parameter(torch.randn(body.config.d_model) * 0.02)  # w of eq. 4

    @property
    def config(self) -> ModelConfig:
        return self.body.config

    def forward(self, batch: dict) -> torch.Tensor:
        """A PermutationLM batch → logits (B, n, V) at its targets, from the query stream."""
        ids, tpos = batch["input_ids"], batch["target_pos"]  # (B, T), (B, n)
        B, T = ids.shape
        n = tpos.shape[1]
        content = self.body.tok_embeddings(ids)  # (B, T, D)
        query = self.mask_emb.to(content.dtype).expand(B, n, -1)  # (B, n, D)
        positions = torch.cat([torch.arange(T, device=ids.device).expand(B, T), tpos], dim=1)  # (B, T + n)
        mask = torch.zeros(B, T + n, T + n, dtype=torch.bool, device=ids.device)
        mask[:, :T, :T] = batch["content_mask"]
        mask[:, T:, :T] = batch["query_mask"]
        h = self.body.hidden(inputs_embeds=torch.cat([content, query], dim=1), positions=positions,
                             mask=mask[:, None])  # (B, T + n, D)
        return self.body.lm_head(h[:, T:])  # (B, n, V)


def plm_loss(model: TwoStream, batch: dict) -> tuple[torch.Tensor, dict]:
    """XLNet's partial-prediction objective (Yang et al. 2019 eq. 5): mean −log p(x_{z_t} |
    x_{z<t}) over the targets (the last n of the order), read from the query stream, fp32.
    Metrics: plm_acc (argmax accuracy at the targets)."""
    logits = model(batch)  # (B, n, V)
    targets = batch["input_ids"].gather(1, batch["target_pos"])  # (B, n)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, {"plm_acc": acc}
