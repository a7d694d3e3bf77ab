"""Schema-driven fuzzing of the live API: no generated request may get a 5xx.

The schema is the one the running API serves at ``/openapi.json``. Operations the API
routes but the document does not (yet) describe are added here with the same path
parameter schema, so that every public read and write is fuzzed either way.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from aisle.stack import Stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 30
ID_PARAM = {"type": "string", "pattern": r"^[A-Za-z0-9_.:@/+\-]{1,128}$"}
# Must be fuzzed; the two profile/offers paths are supplied below if the document lacks them.
REQUIRED = {
    ("GET", "/v1/items/{item_id}/related"),
    ("GET", "/v1/users/{user_id}/recommendations"),
    ("GET", "/v1/users/{user_id}/profile"),
    ("GET", "/v1/users/{user_id}/offers"),
    ("POST", "/v1/events"),
}
SUPPLEMENT: dict[str, dict[str, Any]] = {
    "/v1/users/{user_id}/profile": {"get": {
        "summary": "Customer profile (segment, lifecycle, RFM, tier, offers)",
        "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": ID_PARAM}],
        "responses": {"200": {"description": "profile"}, "422": {"description": "invalid"}},
    }},
    "/v1/users/{user_id}/offers": {"get": {
        "summary": "Active offers (may issue one)",
        "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": ID_PARAM}],
        "responses": {"200": {"description": "offers"}, "422": {"description": "invalid"}},
    }},
}
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None,
    suppress_health_check=list(HealthCheck), print_blob=True,
)


def _schema(api_url: str) -> schemathesis.schemas.BaseSchema:
    live = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    document = copy.deepcopy(live.raw_schema)
    for path, item in SUPPLEMENT.items():
        document["paths"].setdefault(path, item)
    schema = schemathesis.openapi.from_dict(document)
    schema.base_url = api_url
    return schema


def _tail(stack: Stack, lines: int = 60) -> str:
    logs = sorted(stack.log_dir.glob("api*"))
    if not logs:
        return "(no API log found)"
    return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])


def test_no_generated_request_gets_a_server_error(stack: Stack) -> None:
    assert stack.api_url
    schema = _schema(stack.api_url)
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an unusable operation in the document fails here
    seen = {(op.method.upper(), op.path) for op in operations}
    assert seen >= REQUIRED, f"not fuzzed: {sorted(REQUIRED - seen)}"

    server_errors: list[str] = []
    sent: Counter[tuple[str, str]] = Counter()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz(operation, mode, stack.api_url, session, server_errors, sent)
                except Unsatisfiable:
                    # Nothing to negate in an operation without parameters or body.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                except Exception:
                    print("\n\n".join(server_errors))
                    print("--- API log tail ---\n" + _tail(stack))
                    raise
    assert not server_errors, "\n\n".join(server_errors)
    assert all(sent[op] >= MAX_EXAMPLES for op in REQUIRED), sent


def _fuzz(operation: Any, mode: GenerationMode, api_url: str, session: requests.Session,
          server_errors: list[str], sent: Counter[tuple[str, str]]) -> None:
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=api_url, session=session, timeout=15)
        sent[(operation.method.upper(), operation.path)] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{operation.label} [{mode.value}] -> {response.status_code}\n"
                f"  {case.as_curl_command()}\n  {response.text[:500]}")
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()


def test_random_bytes_as_events_body_are_rejected(api: httpx.Client, stack: Stack) -> None:
    answers: list[tuple[bytes, int, str]] = []

    @settings(FUZZ_SETTINGS, max_examples=50)
    @given(body=st.binary(max_size=2048))
    def post(body: bytes) -> None:
        response = api.post("/v1/events", content=body,
                            headers={"content-type": "application/json"})
        answers.append((body, response.status_code, response.text[:300]))
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)

    try:
        post()
    except Exception:
        print("--- API log tail ---\n" + _tail(stack))
        raise
    assert len(answers) >= 50, f"only {len(answers)} bodies were sent"
