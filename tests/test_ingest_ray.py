"""Encoding on Ray: a one-CPU Ray started here stands in for a cluster (starting Ray is slow, so it is
shared by this module's tests). The rows equal a local ingest's; a worker killed mid-ingest is retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import IngestReport, ingest
from dpr_pg.ingest.ray_encoders import ACTOR_NAME, BATCHES_PER_ACTOR, RAY_INSTALL


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, n: int) -> Path:
    records = [{"id": f"r{i:02d}", "title": f"Pueblo {i}",
                "text": " ".join(f"calle{(i + j) % 13} plaza número {i}" for j in range(40))} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def stored(engine: Engine, collection: str) -> dict[str, tuple[str, np.ndarray]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT external_id, content_hash, embedding::text FROM dpr_pg.passages "
                                    "WHERE collection = :c"), {"c": collection}).all()
    return {key: (digest, np.array(json.loads(vector), dtype=np.float32)) for key, digest, vector in rows}


def kill_the_encoder_worker(ray) -> int:  # noqa: ANN001
    """SIGKILL the process of the ingest's (only) Ray actor, as a crashed worker; returns its pid."""
    while not (names := [name for name in ray.util.list_named_actors() if name.startswith(ACTOR_NAME)]):
        time.sleep(0.05)  # the actors start with the first batch to encode
    pid = ray.get(ray.get_actor(names[-1]).identity.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        time.sleep(0.05)
    return pid


def test_ingest_on_ray_writes_what_a_local_ingest_writes_and_retries_a_dead_worker(
        engine: Engine, torch_pair: EncoderPair, local_ray, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pueblos.jsonl", 24)
    local = ingest(engine, torch_pair, source, collection="local", batch_size=8)
    killed: list[int] = []

    def kill_once(_: IngestReport) -> None:
        if not killed:
            killed.append(kill_the_encoder_worker(local_ray))

    report = ingest(engine, torch_pair, source, collection="ray", batch_size=8, ray=True, on_batch=kill_once)
    # The batches that were out with the killed actor (its capacity, and the one just sent before the oldest
    # is collected) are sent again, once each, to the one actor that replaced it.
    assert report.ray_actors == 1 and len(killed) == 1 and 1 <= report.ray_retries <= BATCHES_PER_ACTOR + 1
    assert (report.inserted, report.encoded, report.rejected) == (local.inserted, local.encoded, 0)
    on_ray, here = stored(engine, "ray"), stored(engine, "local")
    assert sorted(on_ray) == sorted(here) and len(here) == local.inserted > 24
    for key, (digest, vector) in here.items():
        assert on_ray[key][0] == digest
        np.testing.assert_allclose(on_ray[key][1], vector, rtol=1e-4, atol=1e-5)
    again = ingest(engine, torch_pair, source, collection="ray", batch_size=8, ray=True)
    assert (again.inserted, again.updated, again.encoded, again.unchanged) == (0, 0, 0, local.inserted)
    assert again.ray_actors == 0  # nothing to encode: no actor was started


def test_the_cli_encodes_on_the_cluster_at_an_address(database_url: str, engine: Engine, tiny_models, local_ray,
                                                      tmp_path: Path, cli) -> None:
    source = write_jsonl(tmp_path / "calles.jsonl", 6)
    address = local_ray.get_runtime_context().gcs_address
    result = cli("--database-url", database_url, "ingest", str(source), "--collection", "calles",
                 "--question-model", str(tiny_models[0]), "--passage-model", str(tiny_models[1]),
                 "--ray", address, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["inserted"], report["ray_actors"], report["ray_retries"], report["rejected"]) == (
        len(stored(engine, "calles")), 1, 0, 0)


def test_ray_not_installed_says_how_to_install_it(tiny_models, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "x.jsonl", 1)
    hide_ray = ("import sys; sys.modules['ray'] = None; from dpr_pg.cli import main; "
                "main(['ingest', sys.argv[1], '--collection', 'x', '--ray'])")
    result = subprocess.run([sys.executable, "-c", hide_ray, str(source)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert RAY_INSTALL in result.stderr and "Traceback" not in result.stderr
