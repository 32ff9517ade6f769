"""schemathesis against /v1/embeddings: requests generated from the server's own schema
(the model name narrowed to the embedding model's) never get a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from embed_fakes import FakeEmbedder  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from infer_helpers import make_model, make_tokenizer  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402


def _app():
    from ember.infer import Engine
    from ember.infer.server import create_app

    engine = Engine(make_model(0, max_seq_len=32), make_tokenizer())
    return create_app(engine, "tiny", embedder=FakeEmbedder(), embedding_model="fake-minilm")


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(path="/v1/embeddings")


def test_the_embeddings_body_names_the_embedding_model():
    spec = APP.openapi()
    assert "requestBody" in spec["paths"]["/v1/embeddings"]["post"]
    assert spec["components"]["schemas"]["EmbeddingRequest"]["properties"]["model"]["enum"] == ["fake-minilm"]
    assert spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["tiny"]


@schema.parametrize()
@settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_embeddings_request_makes_the_server_fail(case):
    case.call_and_validate(checks=[not_a_server_error])
