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
        from ember.quant import QuantConfig, apply_quant

        model = apply_quant(model, QuantConfig(mode=quant))
    return model, load_tokenizer(name_or_path)
