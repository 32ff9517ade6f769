"""The trace as one self-contained HTML page: no network, images inline as base64 PNG, and
every piece of model text HTML-escaped (a token may be `<script>`).

    >>> "&lt;b&gt;" in _cell("<b>")
    True
"""

from __future__ import annotations

import base64
import html

import torch

STYLE = """body{font:14px system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
code,.tok{font-family:ui-monospace,monospace;white-space:pre}.tok{background:#eef;border-radius:3px;padding:0 2px}
img{max-width:100%}h2{margin-top:1.6em}"""


def _cell(text) -> str:
    return f'<span class="tok">{html.escape(str(text))}</span>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _shade(p: float) -> str:
    return f' style="background:rgba(70,120,230,{min(1.0, p):.2f})"'


def _layers_table(tr: dict) -> str:
    rows = ["<tr><th>block</th><th>logit lens top tokens (last position)</th><th>attends to (mean over heads)</th></tr>"]
    for lay in tr["layers"]:
        att = lay["attention"]
        att = att[0]["top"] if att and "head" in att[0] else att
        tops = " ".join(f"<span{_shade(d['prob'])}>{_cell(d['token'])} {d['prob']:.3f}</span>" for d in lay["top"])
        where = " ".join(f"{_cell(a['token'])}@{a['pos']} {a['weight']:.2f}" for a in att)
        rows.append(f"<tr><td>{lay['layer']}</td><td>{tops}</td><td>{where}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _sampling_table(tr: dict) -> str:
    names = "".join(f"<th>{_cell(n['token'])}</th>" for n in tr["next"])
    rows = [f"<tr><th></th>{names}</tr>"]
    rows.append("<tr><td>model (T=1)</td>" + "".join(f"<td>{n['prob']:.3f}</td>" for n in tr["next"]) + "</tr>")
    for T, ps in tr["sampling"]["temperature"].items():
        rows.append(f"<tr><td>T = {T}</td>" + "".join(f"<td>{p:.3f}</td>" for p in ps) + "</tr>")
    k = tr["sampling"]["top_k"]
    rows.append(f"<tr><td>top-k = {k['k']}</td>" + "".join(f"<td>{p:.3f}</td>" for p in k["kept"]) + "</tr>")
    for tp in tr["sampling"]["top_p"]:
        rows.append(f"<tr><td>top-p = {tp['p']} ({tp['n_kept']} kept)</td>"
                    + "".join(f"<td>{p:.3f}</td>" for p in tp["kept"]) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _summary_table(summ: dict[str, torch.Tensor]) -> str:
    """Per layer: the head with the highest score of each kind."""
    names = list(summ)
    rows = ["<tr><th>block</th>" + "".join(f"<th>{n} (head: value)</th>" for n in names) + "</tr>"]
    for i in range(next(iter(summ.values())).shape[0]):
        cells = []
        for n in names:
            v = summ[n][i]
            h = int(v.argmin()) if n == "entropy" else int(v.argmax())
            cells.append(f"<td>h{h}: {float(v[h]):.2f}</td>")
        rows.append(f"<tr><td>{i}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def trace_html(tr: dict, attn: torch.Tensor, summ: dict[str, torch.Tensor]) -> str:
    """The page for one trace (see ember.inspect.trace for `tr`); attn (L, H, T, T)."""
    from ember.inspect.attention import mosaic_png, summaries_png

    toks = tr["tokens"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ember trace</title><style>{STYLE}</style>",
             "</head><body>", f"<h1>Trace of {_cell(tr['text'])} on {html.escape(str(tr['model']))}</h1>",
             "<h2>1. Tokens</h2><table><tr><th>pos</th><th>token</th><th>id</th><th>embedding norm</th>"
             "<th>first dims</th></tr>"]
    for t, e in zip(toks, tr["embeddings"]):
        dims = ", ".join(f"{v:+.3f}" for v in e["first"])
        parts.append(f"<tr><td>{e['pos']}</td><td>{_cell(t['text'])}</td><td>{t['id']}</td>"
                     f"<td>{e['norm']:.3f}</td><td><code>[{dims}, …]</code></td></tr>")
    parts += ["</table>", "<h2>2. The logit lens, block by block</h2>",
              "<p>The residual stream after each block, read through the final norm and the output head.</p>",
              _layers_table(tr), "<h2>3. Next token, and how sampling reshapes it</h2>", _sampling_table(tr)]
    sm = tr["sampled"]
    parts.append(f"<p>Sampled (seed {sm['seed']}, T={sm['temperature']}, top-k {sm['top_k']}, top-p {sm['top_p']}):"
                 f" {_cell(sm['token'])} (id {sm['id']})</p>")
    parts += ["<h2>4. Attention maps</h2>", _img(mosaic_png(attn), "attention per layer and head")]
    if summ:
        parts += ["<h2>5. Heads at a glance</h2>",
                  "<p>entropy (nats), mean distance looked back, weight on the previous token, and the induction "
                  "score on a repeated random-token sequence.</p>", _img(summaries_png(summ), "head summaries"),
                  _summary_table(summ)]
    parts.append("</body></html>")
    return "\n".join(parts)
