"""What `quant="auto"` resolves to, and loading a model onto the native kernels."""

from __future__ import annotations

import torch

from ember.core.gguf import open_gguf
from ember.core.registry import regular_file, resolve_model
from ember.kernels.build import load_kernels, unavailable_reason
from ember.kernels.decode import apply_native, build_native_gguf, gguf_is_q4, native_unsupported
from ember.model.convert.gguf import config_from_gguf
from ember.model.load import load_model

QUANT_CHOICES = (None, "int8", "int4", "native", "auto")


def _is_gguf(path) -> bool:
    if path.is_dir():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(regular_file(path, "model file"), "rb") as f:
        return f.read(4) == b"GGUF"


def resolve_quant(name_or_path, quant: str | None, device="cpu") -> str | None:
    """What `quant="auto"` means for this model: "native" for a GGUF whose block matrices are
    Q4_1/Q4_0 when the native kernels load and run its architecture, "int4" (torch's int4
    kernel on the same blocks) for such a file otherwise, None (exact float) for anything
    else. Other values pass through, checked.

    >>> resolve_quant("model.gguf", "int8")
    'int8'
    """
    if quant not in QUANT_CHOICES:
        raise ValueError(f"quant {quant!r} is not one of {QUANT_CHOICES}")
    if quant != "auto":
        return quant
    path = resolve_model(name_or_path)
    if not _is_gguf(path) or not gguf_is_q4(path):
        return None
    cpu = torch.device(device).type == "cpu"
    if cpu and native_unsupported(config_from_gguf(open_gguf(path))) is None and load_kernels() is not None:
        return "native"
    return "int4"


def load_native(name_or_path):
    """A NativeTransformer: from a GGUF's own blocks, or a float model rounded to Q4_1/Q8_0.
    A ValueError says why when the kernels cannot run here."""
    if load_kernels() is None:
        raise ValueError(f"quant 'native': {unavailable_reason()}")
    path = resolve_model(name_or_path)
    if _is_gguf(path):
        return build_native_gguf(path)
    return apply_native(load_model(path))
