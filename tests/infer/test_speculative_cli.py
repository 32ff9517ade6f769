"""The speculative options of `ember generate` / `ember serve` (ember/cli/draft_options.py):
the drafter each names, and bad combinations refused by name."""

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.cli.draft_options import build_speculative
from ember.cli.infer import GenerateConfig, ServeConfig
from ember.infer.draft import ModelDrafter
from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams


@pytest.mark.parametrize("kw, msg", [
    ({"speculative": "draft"}, "--speculative draft needs --draft-model NAME|DIR"),
    ({"draft_model": "student"}, "--draft-model student is used only with --speculative draft, got --speculative auto"),
    ({"speculative": "early-exit", "draft_k": 0}, "--draft-k must be an integer >= 1, got 0"),
    ({"speculative": "early-exit", "draft_layers": 0}, "--draft-layers must be an integer >= 1, got 0"),
])
def test_bad_combinations_are_refused_by_name(kw, msg):
    for config in (GenerateConfig, ServeConfig):
        with pytest.raises(ValueError, match=msg):
            config(prompt="hi", **kw) if config is GenerateConfig else config(**kw)


def test_the_model_options_are_still_checked():
    with pytest.raises(ValueError, match="--threads must be an integer >= 1, got 0"):
        ServeConfig(threads=0)


def test_early_exit_drafts_with_the_models_first_blocks():
    model, tok = make_model(dtype=torch.float64, n_layers=3), make_tokenizer()
    cfg = GenerateConfig(prompt="hi", model="tiny", speculative="early-exit", draft_layers=2, draft_k=3)
    drafter = build_speculative(model, tok, cfg)
    assert isinstance(drafter, ModelDrafter) and drafter.k == 3 and len(drafter.model.layers) == 2
    assert drafter.name == "tiny's first 2 blocks" and 0.5 < drafter.cost < 1
    engine = Engine(model, tok, max_batch_size=1, speculative=drafter)
    req = engine.add_request(list(range(30)), SamplingParams(seed=0, max_tokens=20, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    assert req.spec_drafted > 0 and len(req.token_ids) == 20
    with pytest.raises(ValueError, match=r"draft layers must be in 1..2 \(the model has 3 blocks\), got 3"):
        build_speculative(model, tok, GenerateConfig(prompt="hi", speculative="early-exit", draft_layers=3))
    assert build_speculative(model, tok, GenerateConfig(prompt="hi", speculative="off")) == "off"


def test_a_draft_model_folder_loads_and_one_with_another_tokenizer_is_refused_naming_both(tmp_path, smollm2_tokenizer):
    from ember.model.config import ModelConfig
    from ember.model.convert.hf import save_hf
    from ember.model.transformer import Transformer
    from ember.tokenizer.hf_export import save_hf_tokenizer

    def folder(name, tok, vocab_size):
        torch.manual_seed(0)
        model = Transformer(ModelConfig.tiny(vocab_size=vocab_size, max_seq_len=128)).eval()
        save_hf(model, tmp_path / name)
        save_hf_tokenizer(tok, tmp_path / name)
        return model, str(tmp_path / name)

    target, same = folder("same", smollm2_tokenizer, smollm2_tokenizer.vocab_size)
    cfg = GenerateConfig(prompt="hi", model="target", speculative="draft", draft_model=same, draft_k=2)
    drafter = build_speculative(target, smollm2_tokenizer, cfg)
    assert isinstance(drafter, ModelDrafter) and drafter.name == same and drafter.k == 2
    _, other = folder("other", make_tokenizer(), 260)
    cfg = GenerateConfig(prompt="hi", model="target", speculative="draft", draft_model=other)
    with pytest.raises(ValueError, match=f"the draft model {other} has vocab_size 260, target 49152"):
        build_speculative(target, smollm2_tokenizer, cfg)
