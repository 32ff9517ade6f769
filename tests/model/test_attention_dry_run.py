"""The 3-token attention dry run from the seed ("LLM Fundamentals" §3).

We do not have the note's Q, K, V, so these are constructed (d_k = 4, scale 1/√4) to give
exactly its rounded numbers: raw scores differ by whole units, so the scaled scores are
row 0 [x, x, x+½], row 1 [y, y, y-½], row 2 [z+1, z, z+½], whose softmaxes round to the
note's weights. The note's output row 0 [0.72, 0.72, 0.27, 0.27] is 0.27·v0 + 0.27·v1 +
0.45·v2 with the *rounded* weights; with exact weights it is [0.726, 0.726, 0.274, 0.274].
"""

import torch

from ember.model import attention

Q = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
K = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
V = K.clone()
WEIGHTS = torch.tensor([[0.27, 0.27, 0.45], [0.38, 0.38, 0.23], [0.51, 0.19, 0.31]])


def test_weights_match_the_note():
    weights = torch.softmax(Q @ K.T / 4**0.5, dim=-1)
    torch.testing.assert_close(weights.round(decimals=2), WEIGHTS)


def test_output_through_the_model_attention():
    out = attention(Q[None, None], K[None, None], V[None, None])[0, 0]  # bidirectional, as in the note
    torch.testing.assert_close(out, WEIGHTS @ V, atol=0.01, rtol=0)  # the note's rounding
    torch.testing.assert_close(out[0], torch.tensor([0.72, 0.72, 0.27, 0.27]), atol=0.01, rtol=0)
    torch.testing.assert_close(out, torch.softmax(Q @ K.T / 2, -1) @ V)


def test_causal_mask_hides_the_future():
    out = attention(Q[None, None], K[None, None], V[None, None], is_causal=True)[0, 0]
    torch.testing.assert_close(out[0], V[0])  # token 0 sees only itself
    mask = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(attention(Q[None, None], K[None, None], V[None, None], mask=mask)[0, 0], out)


def test_gqa_and_mqa_match_repeated_heads():
    torch.manual_seed(0)
    q = torch.randn(2, 6, 5, 8)  # (B, H, T, Dh)
    for n_kv in (1, 2, 3, 6):
        k, v = torch.randn(2, 2, n_kv, 5, 8).unbind(0)  # (B, Hkv, T, Dh)
        ref = torch.softmax(q @ k.repeat_interleave(6 // n_kv, 1).transpose(-1, -2) / 8**0.5, -1)
        ref = ref @ v.repeat_interleave(6 // n_kv, 1)
        torch.testing.assert_close(attention(q, k, v), ref, atol=1e-6, rtol=1e-5)
