"""The post-training kit: what every post-training recipe (SFT, DPO, reward, GRPO, PPO)
shares, so that a recipe is only its Config, its loss and its data, and never imports
another recipe.

- config.py: `PostTrainConfig` (model, PEFT, LoRA, loop, optimizer) and `PreferenceConfig`
  (preference data) for recipes to subclass.
- model.py: load a model for training (base + LoRA / QLoRA / prompt / prefix, seeded
  adapter init), the pad id, the run_config dict, saving the adapter, loading a reward model.
- batch.py: padding rows, batching prompt + completion, sequence and token log-probs.
- rollout.py: sampling and greedy evaluation through the engine, loading preference rows,
  reading metrics.jsonl back.
"""

from ember.train.kit.batch import (
    batch_completions,
    pad_rows,
    sequence_logprobs,
    split_rows,
    token_logprobs,
)
from ember.train.kit.config import PostTrainConfig, PreferenceConfig
from ember.train.kit.model import (
    apply_peft,
    base_config,
    context_len,
    load_for_training,
    load_reward_model,
    pad_id,
    run_config,
    save_adapter_folder,
)
from ember.train.kit.rollout import generate, greedy_replies, load_preference_rows, read_metrics

__all__ = [
    "PostTrainConfig", "PreferenceConfig", "apply_peft", "base_config", "batch_completions",
    "context_len", "generate", "greedy_replies", "load_for_training", "load_preference_rows",
    "load_reward_model", "pad_id", "pad_rows", "read_metrics", "run_config", "save_adapter_folder",
    "sequence_logprobs", "split_rows", "token_logprobs",
]
