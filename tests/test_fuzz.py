"""schemathesis against the service's own /openapi.json: no 5xx, answers as documented.

Bounded: CSVSTORE_FUZZ_EXAMPLES examples per operation (a few in ``make test``, many more
in ``make stress``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok

from tests.serverproc import ServerProcess

# The contract answers 400 to some schema-valid requests: a duplicate session id, and
# bytes that match the schema's "binary" but are not CSV text.
CONTRACT_SAYS_OTHERWISE = [schemathesis.checks.positive_data_acceptance]

EXAMPLES = int(os.environ.get("CSVSTORE_FUZZ_EXAMPLES", "15"))

# A tus PATCH body is raw bytes under its own media type: sent as octet-stream bodies are.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

# Invalid requests are refused with the usual 4xx, and a tus request without (or with
# another) Tus-Resumable with 412, as the tus 1.0 specification requires.
REJECTION_STATUSES = [
    *("400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"),
    "412",
]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")) / "data")
    server.start()
    # a session that exists, so that operations on one get past the 404
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "fuzz"}, timeout=10)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_every_operation_answers_as_documented(live_server: ServerProcess) -> None:
    # Strategies per operation, driven by hypothesis directly: schemathesis' own pytest
    # plugin does not yet work with pytest 9.
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}}}
    )
    api = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", config=config)
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result}"
        operations.append(result.ok())
    assert len(operations) >= 9
    sent = 0
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            nonlocal sent
            # A made-up Transfer-Encoding makes the request invalid HTTP: aiohttp's HTTP layer
            # refuses it (a plain 400) before any route sees it. That answer is tested on its
            # own in test_process.py; here only requests the API can see count.
            assume(not any(name.lower() == "transfer-encoding" for name in case.headers or {}))
            response = case.call(timeout=30)
            sent += 1
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"
            case.validate_response(response, excluded_checks=CONTRACT_SAYS_OTHERWISE)

        try:
            exercise()
        except Unsatisfiable:
            # an operation whose every input is valid (a free-form path parameter) has no
            # invalid requests to send
            if mode is not schemathesis.GenerationMode.NEGATIVE:
                raise
    print(f"\nfuzz: {sent} requests (valid and invalid) over {len(operations)} operations, no 5xx")
