"""schemathesis against the served OpenAPI: generated requests never get a 5xx or an off-schema response."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

import dpr_pg
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import ingest
from dpr_pg.service.keys import create_key

import _served

EXAMPLES = 25  # per operation: bounded, so the test stays within seconds on two cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SAMPLE = Path(dpr_pg.__file__).parent / "data" / "sample_es.jsonl"


@pytest.fixture(scope="module")
def served_with_key(server, tiny_models: tuple[Path, Path], pair: EncoderPair,
                    tiny_reader: Path) -> Iterator[tuple[str, str]]:
    """(base URL, key) of a server whose database holds the sample and one key with every scope."""
    name = server.create_database(template=server.initialized_template(768))
    url = server.url_for(name)
    engine = sa.create_engine(url)
    ingest(engine, pair, SAMPLE, collection="demo")
    _, secret = create_key(engine, "schemathesis", scopes=["search", "write"])
    engine.dispose()
    running = _served.start(url, tiny_models, "--reader", str(tiny_reader))
    yield running.url, secret
    running.stop()
    assert "Traceback" not in running.output
    server.drop_database(name)


def test_generated_requests_get_no_5xx_and_no_off_schema_response(served_with_key: tuple[str, str]) -> None:
    base_url, secret = served_with_key
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    statuses: Counter[str] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=120)
            statuses[f"{case.method} {case.path} {response.status_code}"] += 1
            case.validate_response(response, checks=CHECKS)

        check()
    print(f"\nschemathesis: {operations} operations, {sum(statuses.values())} requests")
    for line, count in sorted(statuses.items()):
        print(f"  {count:4d}  {line}")
    assert operations == 11
    assert not any(line.endswith(tuple(f" 5{d}{u}" for d in "0123456789" for u in "0123456789")) for line in statuses)
