"""ember: one hackable PyTorch codebase for the whole life of a large language model.

>>> import ember
>>> model, tok = ember.load("smollm2")  # doctest: +SKIP
>>> model(torch.tensor([tok.encode("Hello")])).shape  # doctest: +SKIP
torch.Size([1, 1, 49152])
"""

__version__ = "0.1.0"


def load(name_or_path, dtype=None, device="cpu", quant: str | None = None):
    """(model, tokenizer) from a known name ("smollm2"), a GGUF file, or an HF folder.

    dtype: torch dtype of the weights (default float32, exact). quant: None, "int8" or
    "int4" weight-only matmuls for fast CPU decode (see ember.quant).
    """
    import torch

    from ember.model.load import load_model
    from ember.tokenizer import load_tokenizer

    model = load_model(name_or_path, dtype=dtype or torch.float32, device=device)
    if quant:
        from ember.core.registry import resolve_model
        from ember.quant import QuantConfig, apply_quant, apply_quant_from_gguf

        cfg = QuantConfig(mode=quant)
        path = resolve_model(name_or_path)
        if path.suffix.lower() == ".gguf":  # int4 takes the file's Q4_1 blocks exactly
            from ember.core.gguf import gguf_field, open_gguf
            from ember.model.convert.gguf import gguf_raw_tensors

            reader = open_gguf(path)
            raw = gguf_raw_tensors(reader, gguf_field(reader, "general.architecture"))
            model = apply_quant_from_gguf(model, raw, cfg)
        else:
            model = apply_quant(model, cfg)
    return model, load_tokenizer(name_or_path)
