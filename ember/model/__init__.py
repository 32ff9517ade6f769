"""The Transformer (GPT-2 and Llama families from one definition), its KV cache, and loaders.

>>> from ember.model import ModelConfig, Transformer
>>> Transformer(ModelConfig.tiny()).config.n_kv_heads
2
"""

from ember.model.config import ModelConfig
from ember.model.kv_cache import KVCache
from ember.model.layers import attention
from ember.model.load import load_model
from ember.model.transformer import Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer", "attention", "load_model"]
