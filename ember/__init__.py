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
    takes the file's Q4_1 blocks exactly. "native": the native kernels (ember.kernels: the
    file's Q4 blocks, int8 activations, one call per decode step; a float model is rounded
    to Q4_1). "auto" (what `ember generate/chat/serve` use): the fastest faithful path — a
    GGUF whose block matrices are 4-bit runs on its own blocks (native where the CPU and a
    compiler allow, else torch int4, fused), anything else exactly in float. fuse: one
    matmul for q/k/v and one for gate/up (inference only: the fused model's state dict has
    other keys). Training and inspection want the default (None): plain float modules.
    """
    import torch

    from ember.kernels.auto import load_native, resolve_quant
    from ember.model.load import load_model
    from ember.tokenizer import load_tokenizer

    dtype = dtype or torch.float32
    fuse = fuse or quant == "auto"  # the fast path fuses q/k/v and gate/up
    quant = resolve_quant(name_or_path, quant, device)
    if quant == "native":
        return load_native(name_or_path), load_tokenizer(name_or_path)
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
