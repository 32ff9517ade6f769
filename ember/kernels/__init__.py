"""Native CPU kernels (AVX-512 VNNI): int4/int8 block matmuls on GGUF's own Q4_1/Q4_0/Q8_0
codes and a fused decode step for Llama-family models, with plain-PyTorch fallbacks."""
