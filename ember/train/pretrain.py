"""`ember pretrain`: a GPT (or an encoder) from scratch on token shards, on the one training loop.

With no arguments it trains the `mini-llama` arch on the bundled corpus (pydoc topics and
stdlib docstrings, on every machine) with a 4,096-token BPE trained on that corpus, in a
few minutes on 2 cores; samples go from noise to word-like text. The same command runs
under `torchrun --nproc-per-node N -m ember pretrain ...` with DDP or FSDP2. The building
blocks (arch table, data and run configs, the Trainer) live in ember.train.kit.pretraining,
which the scaling sweep shares.

`--objective` picks what is learned (ember.train.kit.objectives): clm, next-token prediction
(the default); mlm, electra or plm, an encoder (`--arch mini-bert`), e.g.

    ember pretrain --arch mini-bert --objective electra --train.steps 200

The checkpoint of an encoder run holds everything trained (ELECTRA's generator too);
`load_run` returns the encoder kept: the model itself, ELECTRA's discriminator, XLNet's body.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ember.train.kit.pretraining import (
    ARCHS,
    DataConfig,
    ModelOverrides,
    PretrainConfig,
    build_pretrain,
    load_run,
    model_config,
    prepare_data,
    sample_text,
)

__all__ = ["ARCHS", "Config", "DataConfig", "ModelOverrides", "PretrainConfig", "build_pretrain",
           "export_hf", "load_run", "main", "model_config", "prepare_data", "sample_text"]

Config = PretrainConfig


def main(cfg: PretrainConfig) -> dict:
    from ember.model.load import build_model
    from ember.parallel import full_state_dict

    trainer = build_pretrain(cfg)
    summary = trainer.fit()
    if cfg.export_hf and cfg.objective != "clm":
        print(f"export_hf: skipped for --objective {cfg.objective}; the checkpoint keeps the model (load_run "
              "returns the encoder kept, or span/denoise's encoder-decoder)", file=sys.stderr)
    elif cfg.export_hf:
        sd = full_state_dict(trainer.model, trainer.info)  # collective: FSDP gathers the shards
        if trainer.info.is_main:
            model = build_model(trainer.plain.config, sd)
            summary["hf"] = str(export_hf(model, trainer.tokenizer, Path(cfg.train.out) / "hf"))
    return summary


def export_hf(model, tok, folder: Path) -> Path:
    """An HF safetensors folder (config.json + model.safetensors) with the tokenizer twice:
    tokenizer.json (+ tokenizer_config.json) for transformers, tokenizer.ember.json for ember."""
    from ember.model.convert.hf import save_hf
    from ember.tokenizer.hf_export import save_hf_tokenizer

    save_hf(model, folder)
    save_hf_tokenizer(tok, folder)
    tok.save(folder)
    return folder
