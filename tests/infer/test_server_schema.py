"""Property-based API tests: schemathesis generates requests from the server's own OpenAPI
schema (valid bodies, edge values, wrong types, missing fields) and every response must
be something other than a 5xx. Deterministic (derandomized) and bounded per operation."""

import sys
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from infer_helpers import make_model, make_tokenizer  # noqa: E402

MODEL = "tiny"




def _app():
    from ember.infer import Engine
    from ember.infer.server import create_app

    # A byte-level tokenizer and a 32-token context keep every generated request quick:
    # omitted max_tokens means "the rest of the context", n can be up to 8. (Built at
    # import: schemathesis parametrizes from a loaded schema; the model takes milliseconds.)
    engine = Engine(make_model(0, max_seq_len=32), make_tokenizer(), max_batch_size=4)
    return create_app(engine, MODEL, max_queue=64)


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def test_every_operation_declares_its_body():
    spec = APP.openapi()
    for path, ops in spec["paths"].items():
        if "post" in ops:
            assert "requestBody" in ops["post"], path


@schema.parametrize()
@settings(max_examples=20, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case):
    case.call_and_validate(checks=[not_a_server_error])
