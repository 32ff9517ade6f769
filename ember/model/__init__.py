"""The Transformer (GPT-2 and Llama families from one definition), its KV cache, and loaders.

>>> from ember.model import ModelConfig, Transformer
>>> Transformer(ModelConfig.tiny()).config.n_kv_heads
2
"""

from importlib import import_module

# Names exported here, each from its module, imported on first use: `ember.model.config`
# and `ember.model.gguf_config` stay importable without torch (the torch-free native path).
_HOMES = {"KVCache": "kv_cache", "ModelConfig": "config", "Transformer": "transformer", "attention": "layers",
          "load_model": "load"}

__all__ = ["KVCache", "ModelConfig", "Transformer", "attention", "load_model"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"ember.model.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'ember.model' has no attribute {name!r}")
