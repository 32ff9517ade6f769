"""Parameter-efficient fine-tuning as transforms of a plain model: LoRA, QLoRA's NF4 base,
prompt tuning and prefix tuning. Each `apply_*` freezes the base and returns the model.

>>> from ember.model import ModelConfig, Transformer
>>> from ember.peft import LoraConfig, apply_lora, apply_nf4, peft_parameters
>>> model = apply_lora(apply_nf4(Transformer(ModelConfig.tiny())), LoraConfig(rank=4))
>>> opt = torch.optim.AdamW(peft_parameters(model), lr=1e-3)  # doctest: +SKIP
"""

from ember.peft.adapter import Adapter, adapters_disabled, peft_parameters, peft_state_dict
from ember.peft.io import load_adapter, save_adapter
from ember.peft.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from ember.peft.nf4 import NF4Linear, apply_nf4, dequantize_nf4, nf4_code, quantize_nf4
from ember.peft.prompt import (
    PrefixAttention,
    PrefixKV,
    PromptTuned,
    apply_prefix_tuning,
    apply_prompt_tuning,
)

__all__ = [
    "Adapter", "LoraConfig", "LoraLinear", "NF4Linear", "PrefixAttention", "PrefixKV", "PromptTuned",
    "adapters_disabled", "apply_lora", "apply_nf4", "apply_prefix_tuning", "apply_prompt_tuning",
    "dequantize_nf4", "load_adapter", "lora_parameters", "lora_state_dict", "merge_lora",
    "nf4_code", "peft_parameters", "peft_state_dict", "quantize_nf4", "save_adapter",
]
