"""Load a WordPiece tokenizer from BERT's files: a `tokenizer.json` with a WordPiece model, or
a `vocab.txt` (one token a line, id = line number) with `tokenizer_config.json` beside it.

The sequence length comes from `sentence_bert_config.json` (max_seq_length: what
sentence-transformers truncates to, 256 for all-MiniLM-L6-v2) if present, else
`tokenizer_config.json`'s model_max_length, else 512. The `truncation` and `padding` blocks of
tokenizer.json (128 tokens, fixed padding in MiniLM's) are not taken: callers pass max_length.
"""

from __future__ import annotations

import json
from pathlib import Path

from .bert_text import BertNormalizer
from .json_fields import _check, _read_json, _token_id
from .wordpiece import WordPieceTokenizer

_SPECIAL_NAMES = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "pad_token": "[PAD]", "mask_token": "[MASK]"}
# transformers writes ~1e30 for "no limit"; anything past this is not a real context length.
_MAX_SANE_LENGTH = 1 << 20


def is_wordpiece_json(data) -> bool:
    """True for a tokenizer.json whose model is WordPiece (BERT and its family)."""
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "WordPiece"


def _folder_config(folder: Path) -> tuple[dict, int]:
    """tokenizer_config.json (or {}) and the model's max sequence length."""
    cfg = {}
    if (folder / "tokenizer_config.json").exists():
        f = folder / "tokenizer_config.json"
        cfg = _read_json(f)
        _check(isinstance(cfg, dict), str(f), "the top level", "a JSON object", type(cfg).__name__)
    length = cfg.get("model_max_length")
    if (folder / "sentence_bert_config.json").exists():
        f = folder / "sentence_bert_config.json"
        st = _read_json(f)
        _check(isinstance(st, dict), str(f), "the top level", "a JSON object", type(st).__name__)
        length = st.get("max_seq_length", length)
    if not isinstance(length, int | float) or isinstance(length, bool) or not 2 <= length <= _MAX_SANE_LENGTH:
        length = 512
    return cfg, int(length)


def _special_names(cfg: dict, where: str) -> dict[str, str]:
    """unk/cls/sep/pad/mask token strings, from the config ("str" or {"content": "str"})."""
    out = {}
    for key, default in _SPECIAL_NAMES.items():
        v = cfg.get(key, default)
        v = v.get("content") if isinstance(v, dict) else v
        _check(isinstance(v, str) and v != "", where, key, 'a non-empty string or {"content": string}', cfg.get(key))
        out[key] = v
    return out


def from_vocab_txt(path: str | Path) -> WordPieceTokenizer:
    """`vocab.txt` + the `tokenizer_config.json` beside it (do_lower_case, strip_accents,
    tokenize_chinese_chars, special token names), as transformers' BertTokenizer reads them."""
    path = Path(path)
    where = str(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last token; it is not an empty token
    if not lines:
        raise ValueError(f"{path} holds no tokens")
    cfg, max_len = _folder_config(path.parent)
    flags = {}
    for key, default in (("do_lower_case", True), ("tokenize_chinese_chars", True), ("strip_accents", None)):
        v = cfg.get(key, default)
        _check(v is None or isinstance(v, bool), where, f"tokenizer_config.json {key}", "true, false or null", v)
        flags[key] = v
    lower = True if flags["do_lower_case"] is None else flags["do_lower_case"]
    norm = BertNormalizer(handle_chinese_chars=flags["tokenize_chinese_chars"] is not False,
                          strip_accents=flags["strip_accents"], lowercase=lower)
    vocab = {t: i for i, t in enumerate(lines)}  # a repeated token keeps its last line, as in BERT
    return _build(vocab, norm, _special_names(cfg, where), where, max_len)


def from_wordpiece_json(path: str | Path, data=None) -> WordPieceTokenizer:
    """A Hugging Face `tokenizer.json` whose model is WordPiece (normalizer BertNormalizer or
    none, pre-tokenizer BertPreTokenizer, post-processor BERT's template)."""
    path = Path(path)
    data = _read_json(path) if data is None else data
    where = str(path)
    model = data["model"]
    _check(isinstance(model.get("vocab"), dict), where, "model.vocab", "a JSON object", model.get("vocab"))
    vocab = {k: _token_id(v, where, f"model.vocab[{k!r}]") for k, v in model["vocab"].items()}
    cfg, max_len = _folder_config(path.parent)
    names = _special_names(cfg, str(path.parent / "tokenizer_config.json"))
    names["unk_token"] = model.get("unk_token", names["unk_token"])
    names.update(_template_specials(data.get("post_processor"), where))
    added = []
    for k, t in enumerate(data.get("added_tokens") or []):
        _check(isinstance(t, dict) and isinstance(t.get("content"), str), where, f"added_tokens[{k}]",
               'an object with a "content" string', t)
        if t.get("special", True):
            added.append(t["content"])
    prefix = model.get("continuing_subword_prefix", "##")
    max_chars = model.get("max_input_chars_per_word", 100)
    _check(isinstance(prefix, str), where, "model.continuing_subword_prefix", "a string", prefix)
    _check(isinstance(max_chars, int) and not isinstance(max_chars, bool), where,
           "model.max_input_chars_per_word", "an int", max_chars)
    norm = _normalizer(data.get("normalizer"), where)
    if data.get("pre_tokenizer") != {"type": "BertPreTokenizer"}:
        raise ValueError(f"{where}: unsupported pre_tokenizer {json.dumps(data.get('pre_tokenizer'))[:200]} "
                         "(a WordPiece tokenizer.json needs BertPreTokenizer)")
    return _build(vocab, norm, names, where, max_len, special_tokens=[*names.values(), *added],
                  continuing_prefix=prefix, max_input_chars_per_word=max_chars)


def _normalizer(spec, where: str) -> BertNormalizer:
    if spec is None:  # no normalizer: the text goes to the pre-tokenizer as it is
        return BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    if not isinstance(spec, dict) or spec.get("type") != "BertNormalizer":
        raise ValueError(f"{where}: unsupported normalizer {json.dumps(spec)[:200]} (only BertNormalizer)")
    flags = {k: spec.get(k, d) for k, d in
             (("clean_text", True), ("handle_chinese_chars", True), ("strip_accents", None), ("lowercase", True))}
    for k, v in flags.items():
        _check(v is None and k == "strip_accents" or isinstance(v, bool), where, f"normalizer.{k}", "true or false", v)
    return BertNormalizer(**flags)


def _template_specials(post, where: str) -> dict[str, str]:
    """cls/sep token strings from a BertProcessing or BERT-shaped TemplateProcessing."""
    if post is None:
        return {}
    kind = post.get("type") if isinstance(post, dict) else None
    if kind == "BertProcessing":
        cls, sep = post.get("cls"), post.get("sep")
        ok = all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) for x in (cls, sep))
        _check(ok, where, "post_processor", '{"cls": [token, id], "sep": [token, id]}', post)
        return {"cls_token": cls[0], "sep_token": sep[0]}
    if kind == "TemplateProcessing":
        single = post.get("single")
        toks = [p.get("SpecialToken", {}).get("id") if isinstance(p, dict) else None for p in single or []]
        seqs = [p.get("Sequence", {}).get("id") if isinstance(p, dict) else None for p in single or []]
        if len(toks) == 3 and seqs[1] == "A" and isinstance(toks[0], str) and isinstance(toks[2], str):
            return {"cls_token": toks[0], "sep_token": toks[2]}
    raise ValueError(f"{where}: unsupported post_processor {json.dumps(post)[:200]} (expected BERT's [CLS] A [SEP])")


def _build(vocab: dict[str, int], norm: BertNormalizer, names: dict[str, str], where: str, max_len: int,
           **kw) -> WordPieceTokenizer:
    try:
        return WordPieceTokenizer(vocab, norm, model_max_length=max_len, **names, **kw)
    except ValueError as e:  # the message names tokens or ids; add the file
        raise ValueError(f"{where}: {e}") from None
