"""GET /tokenizer_info, POST /tokenize and /detokenize in the shapes lm-evaluation-harness's
remote tokenizer reads (vLLM's), over a tiny random model wearing SmolLM2's real tokenizer;
then lm-eval's own client code (RemoteTokenizer, the log-likelihood payload and its parser)
against the live server."""

import httpx
import pytest
import torch
from infer_helpers import CHATML, make_tokenizer, serve_tiny

from ember.infer.tokenizer_api import encode_prompt
from ember.tokenizer import Tokenizer

MODEL = "tiny-smollm2"


@pytest.fixture(scope="module")
def live(smollm2_tokenizer):
    srv = serve_tiny(smollm2_tokenizer, max_batch_size=4)
    srv.http = httpx.Client(base_url=srv.url, timeout=60)
    yield srv
    srv.http.close()
    srv.close()


def test_tokenizer_info_names_the_special_tokens_and_template(live, smollm2_tokenizer):
    r = live.http.get("/tokenizer_info")
    assert r.status_code == 200
    info = r.json()
    assert info["eos_token"] == "<|im_end|>" and info["pad_token"] == "<|im_end|>"
    assert info["bos_token"] == "<|im_start|>" and info["add_bos_token"] is False
    assert info["chat_template"] == smollm2_tokenizer.chat_template and "<|im_start|>" in info["chat_template"]
    assert info["model_max_length"] == 256 and info["vocab_size"] == 49152
    assert info["tokenizer_class"] == "Tokenizer" and info["eos_tokens"] == ["<|im_end|>", "<|endoftext|>"]
    assert "<repo_name>" in info["additional_special_tokens"] and "<|im_end|>" not in info["additional_special_tokens"]


def test_tokenize_with_add_special_tokens_reads_special_tokens_as_ids(live, smollm2_tokenizer):
    tok = smollm2_tokenizer
    lm_eval_asks = {"prompt": "<|im_end|>", "add_special_tokens": False}  # RemoteTokenizer.encode's payload
    assert live.http.post("/tokenize", json=lm_eval_asks).json() == {"tokens": [2], "count": 1, "max_model_len": 256}
    r = live.http.post("/tokenize", json={"prompt": "Hi<|im_start|>x", "add_special_tokens": True}).json()
    assert r["tokens"] == tok.encode("Hi") + [1] + tok.encode("x")
    # SmolLM2 adds no BOS: True and False give the same ids
    for text in ["The capital of France is", " 12 apples"]:
        ids = [live.http.post("/tokenize", json={"prompt": text, "add_special_tokens": f}).json()["tokens"]
               for f in (True, False)]
        assert ids[0] == ids[1] == tok.encode(text)
    # without the field, the ids /v1/completions gives a raw prompt: special strings are text
    plain = live.http.post("/tokenize", json={"prompt": "<|im_end|>"}).json()["tokens"]
    assert plain == tok.encode("<|im_end|>") and len(plain) == 7


def test_tokenize_token_strs_and_detokenize(live, smollm2_tokenizer):
    r = live.http.post("/tokenize", json={"prompt": "Hi<|im_end|>", "add_special_tokens": False,
                                          "return_token_strs": True}).json()
    assert r["token_strs"] == ["Hi", "<|im_end|>"] and r["count"] == 2
    assert live.http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "Hi<|im_end|>"}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "add_special_tokens": True}
    ids = live.http.post("/tokenize", json=chat).json()["tokens"]
    assert ids == smollm2_tokenizer.render_chat([{"role": "user", "content": "Hi"}])[0]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "add_special_tokens": "no"}, "add_special_tokens"),
    ({"prompt": "a", "return_token_strs": 1}, "return_token_strs"),
    ({"prompt": "a", "model": "gpt-4"}, "model"),
    ({"tokens": [-1]}, "tokens"),
])
def test_tokenizer_endpoints_refuse_bad_fields_by_name(live, body, param):
    path = "/detokenize" if "tokens" in body else "/tokenize"
    r = live.http.post(path, json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"].startswith(param), r.json()


def test_add_special_tokens_adds_bos_only_where_the_model_does():
    base = make_tokenizer()
    specials = {**base.special_tokens, "<s>": 259 + 1}
    tok = Tokenizer([], pattern="gpt2", special_tokens=specials, bos_token="<s>", add_bos=True,
                    eos_tokens=["<|im_end|>"], chat_template=CHATML)
    assert encode_prompt(tok, "hi<s>", add_special_tokens=True) == [260, 104, 105, 260]
    assert encode_prompt(tok, "hi<s>", add_special_tokens=False) == [104, 105, 260]
    assert encode_prompt(tok, "hi<s>", add_special_tokens=None) == [260, *tok.encode("hi<s>")]


def test_lm_eval_remote_tokenizer_against_the_server(live, smollm2_tokenizer):
    utils = pytest.importorskip("lm_eval.utils")
    url = live.url + "/v1/completions"
    assert utils.check_remote_tokenizer_support(url)  # what the auto-detected default probes
    rt = utils.RemoteTokenizer(url)
    assert (rt.eos_token_id, rt.bos_token_id, rt.eot_token) == (2, 1, 2)
    text = "Question: 2 + 2 =\nAnswer: 4<|im_end|>"
    assert rt.encode(text) == smollm2_tokenizer.encode(text, allowed_special="all")
    assert rt.batch_decode([rt.encode(text), [2]]) == [text, "<|im_end|>"]
    msgs = [{"role": "user", "content": "Hi"}]
    ids, _ = smollm2_tokenizer.render_chat(msgs)
    assert rt.apply_chat_template(msgs) == smollm2_tokenizer.decode(ids)


def test_lm_eval_loglikelihood_payload_gives_the_models_log_probs(live, smollm2_tokenizer):
    """local-completions' exact request (batched token ids, echo, logprobs 1, max_tokens 1),
    parsed by its own parser, equals log-softmax of the model's logits."""
    oc = pytest.importorskip("lm_eval.models.openai_completions")
    tok = smollm2_tokenizer
    pairs = [("Question: what is 2+2?\nAnswer:", " 4"), ("The sky is", " blue today")]
    prompts = [tok.encode(c) + tok.encode(x) for c, x in pairs]
    ctxlens = [len(tok.encode(c)) for c, _ in pairs]
    payload = {"model": MODEL, "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1,
               "seed": 1234, "echo": True}
    r = live.http.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    got = oc.LocalCompletionsAPI.parse_logprobs(r.json(), tokens=prompts, ctxlens=ctxlens)
    model = live.app.state.ember.engine.model
    for (logprob, greedy), ids, n in zip(got, prompts, ctxlens):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).float(), -1)[0]
        want = lp[n - 1:-1].gather(-1, torch.tensor(ids[n:])[:, None]).sum().item()
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == all(lp[t - 1].argmax().item() == ids[t] for t in range(n, len(ids)))
