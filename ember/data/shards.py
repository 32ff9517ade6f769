"""Tokenized pre-training shards: token arrays on disk, a manifest, and a memmapped reader.

A folder made by `prepare_shards` holds:
  plan.json           the documents (path, size, content hash), tokenizer fingerprint and
                      options; a rerun with the same plan resumes, another plan is refused
                      (`read_plan`, `document_changes`: what a folder was made from)
  train_00000.bin     raw little-endian token ids, uint16 (vocab <= 65536) or uint32
  train_00000.idx     uint64 cumulative document end offsets within that shard
  val_00000.bin/.idx  the validation documents of the same work unit (absent if none)
  unit_00000.json     done-marker of work unit 0, written after its shards
  tokenizer/          the tokenizer: load_tokenizer(folder / "tokenizer")
  manifest.json       written last: token and document counts per split and shard

Every document's tokens are followed by one separator id (EOS, else BOS), so packed
documents never run into each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ember.core.io import atomic_write_bytes, atomic_write_json
from ember.core.lock import LOCK_NAME, locked_dir
from ember.data.tokens import (  # noqa: F401  (re-exported: the reader half lives there)
    FORMAT,
    SPLITS,
    VERSION,
    Manifest,
    ShardInfo,
    SplitInfo,
    TokenSplit,
    check_shard,
    load_manifest,
    open_split,
)
from ember.tokenizer import Tokenizer

PLAN_FORMAT = "ember-shards-plan"
_MIN_DOCS_FOR_DOC_SPLIT = 20  # fewer documents: each one gives its tail to val instead
_CALIBRATION_CHARS = 100_000  # text tokenized up front to turn shard_tokens into characters


@locked_dir("out", "data folder")  # two preparations into one folder would mix their shards
def prepare_shards(
    out: str | Path, tokenizer: Tokenizer, inputs: list[str | Path] | None = None,
    texts: list[str] | None = None, *, val_fraction: float = 0.05, shard_tokens: int = 1 << 22,
    workers: int = 2, progress: bool = True, seed: int = 0,
) -> Manifest:
    """Tokenize documents (files, or strings) into train/val shards under `out`; resumable.

    Each input file is one document (folders expand recursively in sorted order, skipping
    hidden names); or each string of `texts` is. With >= 20 documents a seeded hash of each
    document's content sends ~val_fraction of them to val (at least one); with fewer, the
    last ceil(val_fraction * n) tokens of every document go to val. Documents are grouped
    into work units of ~shard_tokens tokens before tokenizing (the plan), one unit per
    shard, so the output is the same for any `workers` and an interrupted run resumes.

    >>> m = prepare_shards("data/py", tok, texts=bundled_documents())  # doctest: +SKIP
    >>> m.splits["train"].n_tokens  # doctest: +SKIP
    1048329
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for name, v in (("shard_tokens", shard_tokens), ("workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    out = Path(out)
    sep = separator_id(tokenizer)
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    entries, sample = _describe_documents(inputs, texts)
    plan = _make_plan(entries, sample, tokenizer, val_fraction, shard_tokens, seed)
    _claim_folder(out, plan)

    job = {"out": str(out), "dtype": dtype, "sep": sep, "val_fraction": val_fraction,
           "tail_split": plan["tail_split"]}
    units = plan["units"]
    markers = {u: m for u in range(len(units)) if (m := _finished_unit(out, u, dtype))}
    todo = [u for u in range(len(units)) if u not in markers]

    def payload(u: int) -> list:
        a, b = units[u]
        return [(e.get("path"), None if texts is None else texts[i], e.get("val", False))
                for i, e in zip(range(a, b), entries[a:b])]

    def n_docs(u: int) -> int:
        return units[u][1] - units[u][0]

    with tqdm(total=len(entries), desc="shards", unit="doc", disable=not progress) as bar:
        bar.update(sum(n_docs(u) for u in markers))
        for u, marker in _run_units(tokenizer, todo, payload, job, workers):
            markers[u] = marker
            bar.update(n_docs(u))

    splits = {s: SplitInfo() for s in SPLITS}
    for u in range(len(units)):
        for s in SPLITS:
            if markers[u][s]:
                shard = ShardInfo(**markers[u][s])
                splits[s].shards.append(shard)
                splits[s].n_tokens += shard.n_tokens
                splits[s].n_documents += shard.n_documents
    manifest = Manifest(out, tokenizer.fingerprint(), tokenizer.vocab_size, dtype, sep,
                        len(entries), splits)
    tokenizer.save(out / "tokenizer")
    atomic_write_json(out / "manifest.json", manifest.to_dict())
    return manifest


def separator_id(tok: Tokenizer) -> int:
    """The id that ends every document: the smallest EOS id, else BOS.

    >>> separator_id(train_bpe(texts, 512, special_tokens=[EOT], eos_tokens=[EOT]))  # doctest: +SKIP
    511
    """
    if tok.eos_token_ids:
        return min(tok.eos_token_ids)
    if tok.bos_token_id is not None:
        return tok.bos_token_id
    raise ValueError(
        "the tokenizer has neither an EOS nor a BOS token to separate documents; "
        "train it with eos_tokens=['<|endoftext|>'] (and that special token)"
    )


# ---- planning ---------------------------------------------------------------------------
def _describe_documents(inputs, texts) -> tuple[list[dict], list[str]]:
    """One plan entry per document (checked now, so bad input fails before any writing),
    and the first ~100k characters of text for calibration."""
    if (inputs is None) == (texts is None):
        raise ValueError("pass exactly one of inputs= (files or folders) or texts= (strings)")
    if texts is not None:
        described = (_describe_text(i, t) for i, t in enumerate(texts))
    else:
        described = (_describe_file(p) for p in expand_inputs(inputs))
    entries, sample, n_sample = [], [], 0
    for entry, text in described:
        entries.append(entry)
        if n_sample < _CALIBRATION_CHARS:
            sample.append(text[: _CALIBRATION_CHARS - n_sample])
            n_sample += len(sample[-1])
    if not entries:
        raise ValueError("no documents: the inputs hold no files")
    return entries, sample


def _describe_text(i: int, t) -> tuple[dict, str]:
    if not isinstance(t, str):
        raise ValueError(f"texts[{i}] is a {type(t).__name__}, not a str")
    if not t.strip():
        raise ValueError(f"texts[{i}] is empty (nothing but whitespace)")
    return {"sha": _digest(t.encode("utf-8", errors="surrogatepass")), "n_chars": len(t)}, t


def _describe_file(path: Path) -> tuple[dict, str]:
    data = path.read_bytes()
    text = _decode_document(path, data)
    return {"path": str(path), "n_bytes": len(data), "sha": _digest(data), "n_chars": len(text)}, text


def expand_inputs(inputs: str | Path | list[str | Path]) -> list[Path]:
    """The document files of `inputs`: files as given, folders recursively in sorted order
    without hidden names (".git", ".DS_Store"); a missing path is a ValueError.

    >>> expand_inputs(["notes.txt", "corpus/"])  # doctest: +SKIP
    [PosixPath('/home/me/notes.txt'), PosixPath('/home/me/corpus/a.txt'), ...]
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            paths.append(p)
        else:
            raise ValueError(f"input {p} does not exist")
    return [p.resolve() for p in paths]


def _decode_document(path: Path, data: bytes) -> str:
    if b"\x00" in data:
        raise ValueError(f"{path} looks binary (it holds NUL bytes); inputs must be UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty (nothing but whitespace); remove it from the inputs")
    return text.removeprefix("\ufeff")  # a BOM is an encoding artifact, not text


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _make_plan(entries, sample, tok, val_fraction, shard_tokens, seed) -> dict:
    # Units are cut by characters before tokenizing (so any worker count cuts the same
    # shards); this tokenizer's chars-per-token on a sample turns shard_tokens into chars.
    chars_per_token = round(sum(map(len, sample)) / max(1, sum(map(len, map(tok.encode, sample)))), 3)
    tail_split = len(entries) < _MIN_DOCS_FOR_DOC_SPLIT
    if not tail_split:
        # Keyed by content, so duplicate documents land in the same split (no val leakage).
        keys = [_unit_interval(f"{seed}:{e['sha']}") for e in entries]
        for e, k in zip(entries, keys):
            e["val"] = k < val_fraction
        if val_fraction > 0 and not any(e["val"] for e in entries):
            entries[int(np.argmin(keys))]["val"] = True
    target = max(1, round(shard_tokens * chars_per_token))
    units, start, chars = [], 0, 0
    for i, e in enumerate(entries):
        chars += e["n_chars"]
        if chars >= target or i == len(entries) - 1:
            units.append([start, i + 1])
            start, chars = i + 1, 0
    return {"format": PLAN_FORMAT, "version": VERSION, "tokenizer_fingerprint": tok.fingerprint(),
            "val_fraction": val_fraction, "shard_tokens": shard_tokens, "seed": seed,
            "chars_per_token": chars_per_token, "tail_split": tail_split, "units": units,
            "documents": entries}


def _unit_interval(key: str) -> float:
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def _claim_folder(out: Path, plan: dict) -> None:
    """Write plan.json into a new or empty folder; accept a folder with the same plan."""
    plan_path = out / "plan.json"
    if plan_path.is_file():
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = {}
        if old != plan:
            differ = sorted(k for k in plan if old.get(k) != plan[k]) if isinstance(old, dict) else []
            raise ValueError(
                f"{out} holds shards of another plan (differs in: {', '.join(differ) or 'format'}); "
                f"pick a new --out or delete {out}"
            )
        return
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder of shards; pick a new --out")
    atomic_write_json(plan_path, plan)


def read_plan(folder: str | Path) -> dict:
    """The plan.json `prepare_shards` wrote into `folder`: what its shards were made from.

    >>> read_plan("data/py")["val_fraction"]  # doctest: +SKIP
    0.05
    """
    path = Path(folder) / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist, so what {folder} was made from cannot be checked; "
                         "prepare the shards again with `ember data prepare`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("documents"), list):
        raise ValueError(f"{path} is not an {PLAN_FORMAT} file")
    return plan


def document_changes(plan: dict, inputs: list[str | Path] | None = None,
                     texts: list[str] | None = None) -> str | None:
    """None when `inputs` (files, folders) or `texts` are the plan's documents, byte for
    byte; else what differs, "PLAN'S vs NOW'S", in one line.

    >>> document_changes(read_plan("data/notes"), inputs=["notes.txt"])  # doctest: +SKIP
    "['/home/me/draft.txt'] vs ['/home/me/notes.txt']"
    """
    docs = plan["documents"]
    old_paths = [d.get("path") for d in docs]
    if inputs is not None:
        files = expand_inputs(inputs)
        if None in old_paths:
            return f"{len(docs)} texts (not files) vs {_show([str(f) for f in files])}"
        if old_paths != [str(f) for f in files]:
            return f"{_show(old_paths)} vs {_show([str(f) for f in files])}"
        changed = [str(f) for f, d in zip(files, docs) if _digest(f.read_bytes()) != d.get("sha")]
        return f"{_show(changed)} changed since the shards were made" if changed else None
    if texts is None:
        raise ValueError("pass inputs= (files or folders) or texts= (strings)")
    if any(old_paths):
        return f"files {_show(old_paths)} vs {len(texts)} texts"
    shas = [_digest(t.encode("utf-8", errors="surrogatepass")) for t in texts]
    if shas != [d.get("sha") for d in docs]:
        n = sum(a != d.get("sha") for a, d in zip(shas, docs)) + abs(len(shas) - len(docs))
        return f"{len(docs)} texts vs {len(texts)} texts, {n} of them different"
    return None


def _show(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{paths[:limit]}{more}"


# ---- tokenizing one work unit -------------------------------------------------------------
# Set once in each worker process by its initializer, so the tokenizer (and its merge
# tables) crosses the process boundary once per worker instead of once per unit.
_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tok_dict: dict) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_dict(tok_dict)


def _worker_unit(u: int, payload: list, job: dict) -> dict:
    return _tokenize_unit(_WORKER_TOKENIZER, u, payload, job)


def _run_units(tok: Tokenizer, todo: list[int], payload, job: dict, workers: int):
    """Yield (unit, marker) as units finish: in this process, or in `workers` processes."""
    if workers == 1 or len(todo) <= 1:
        for u in todo:
            yield u, _tokenize_unit(tok, u, payload(u), job)
        return
    with ProcessPoolExecutor(min(workers, len(todo)), initializer=_init_worker,
                             initargs=(tok.to_dict(),)) as pool:
        futures = {pool.submit(_worker_unit, u, payload(u), job): u for u in todo}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed unit stops the units not yet started
            raise


def _tokenize_unit(tok: Tokenizer, u: int, payload: list, job: dict) -> dict:
    """Tokenize one unit's documents, write its train/val shards, then its done-marker."""
    dtype, sep = np.dtype(job["dtype"]).newbyteorder("<"), job["sep"]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for path, text, to_val in payload:
        if text is None:
            text = _decode_document(Path(path), Path(path).read_bytes())
        ids = tok.encode(text)
        if job["tail_split"]:
            cut = len(ids) - math.ceil(job["val_fraction"] * len(ids))
            pieces = [p for p in (("train", ids[:cut]), ("val", ids[cut:])) if p[1]]
        else:
            pieces = [("val" if to_val else "train", ids)]
        for split, piece in pieces:
            parts[split].append(np.asarray(piece + [sep], dtype=dtype))
    out = Path(job["out"])
    marker = {"unit": u}
    for split, docs in parts.items():
        marker[split] = _write_shard(out, f"{split}_{u:05d}", docs) if docs else None
    atomic_write_json(out / f"unit_{u:05d}.json", marker)
    return marker


def _write_shard(out: Path, stem: str, docs: list[np.ndarray]) -> dict:
    tokens = np.concatenate(docs)
    ends = np.cumsum([len(d) for d in docs], dtype="<u8")
    atomic_write_bytes(out / f"{stem}.idx", ends.tobytes())
    atomic_write_bytes(out / f"{stem}.bin", tokens.tobytes())
    return {"file": f"{stem}.bin", "n_tokens": len(tokens), "n_documents": len(docs)}


def _finished_unit(out: Path, u: int, dtype: str) -> dict | None:
    """The unit's marker if it and the shards it lists are complete, else None (redo it)."""
    try:
        marker = json.loads((out / f"unit_{u:05d}.json").read_text(encoding="utf-8"))
        for split in SPLITS:
            if marker[split]:
                check_shard(out, ShardInfo(**marker[split]), np.dtype(dtype).itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


# ---- reading ----------------------------------------------------------------------------
