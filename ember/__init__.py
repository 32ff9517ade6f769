"""ember: one hackable PyTorch codebase for the whole life of a large language model.

>>> import ember
>>> model, tok = ember.load("smollm2")  # doctest: +SKIP
>>> model(torch.tensor([tok.encode("Hello")])).shape  # doctest: +SKIP
torch.Size([1, 1, 49152])
"""

__version__ = "0.1.0"


def load(name_or_path, dtype=None, device="cpu", quant: str | None = None, fuse: bool = False):
    """(model, tokenizer) from a known name ("smollm2"), a GGUF file, or an HF folder.

    dtype: torch dtype of the float weights (default float32, exact). quant: None, "int8"
    or "int4" weight-only matmuls for fast CPU decode (see ember.quant); from a GGUF, int4
    takes the file's Q4_1 blocks exactly. fuse: one matmul for q/k/v and one for gate/up
    (inference only: the fused model's state dict has other keys).
    """
    import torch

    from ember.model.load import load_model
    from ember.tokenizer import load_tokenizer

    dtype = dtype or torch.float32
    if not quant:
        model = load_model(name_or_path, dtype=dtype, device=device)
    else:
        # Load in bf16 (half the bytes of fp32), quantize, then give the few float tensors
        # left (embeddings, norms) the asked dtype: peak memory stays near the bf16 model.
        model = _quantize(load_model(name_or_path, dtype=torch.bfloat16, device=device), name_or_path, quant)
        for p in model.parameters():
            p.data = p.data.to(dtype)
        if hasattr(model.tok_embeddings, "out_dtype"):  # an int8 table shared with the head
            model.tok_embeddings.out_dtype = dtype
    if fuse:
        from ember.quant import apply_fused_projections

        model = apply_fused_projections(model)
    return model, load_tokenizer(name_or_path)


def _quantize(model, name_or_path, quant: str):
    from ember.core.registry import resolve_model
    from ember.quant import QuantConfig, apply_quant, apply_quant_from_gguf

    cfg = QuantConfig(mode=quant)
    path = resolve_model(name_or_path)
    if path.suffix.lower() != ".gguf":
        return apply_quant(model, cfg)
    from ember.core.gguf import gguf_field, open_gguf
    from ember.model.convert.gguf import gguf_raw_tensors

    reader = open_gguf(path)
    raw = gguf_raw_tensors(reader, gguf_field(reader, "general.architecture"))
    return apply_quant_from_gguf(model, raw, cfg)
