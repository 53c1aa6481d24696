"""Ingest benchmark: N precomputed 768-d vectors written three ways, and re-ingest vs first ingest.

(a) SQLAlchemy ORM ``Session.add_all`` + ``commit``  (the baseline)
(b) psycopg ``executemany`` INSERT (pipeline mode, binary vectors)
(c) ``dpr_pg.ingest`` from a JSONL + ``.npy`` (two-pass read, hash lookup, binary COPY → upsert)
(d) the ceiling (``--methods …,ceiling``): ready-made COPY payloads of (id, vector) into a bare table
    with no index and no text, on two connections: what no method can beat on this machine

Each method runs in its own subprocess against a fresh database (so peak RSS is its own), in
one run of this script, on the embedded PostgreSQL. All three write to the same table with the
HNSW index dropped beforehand (bulk-load setup, as pgvector recommends); the time to build the
index once after (c) is printed separately. Passages are ~100 Spanish words with a title and
metadata, so the generated ``tsv`` column and the GIN indexes are maintained as in production.

Then: re-ingest of an unchanged corpus of ``--reingest-n`` passages with the tiny random encoder
pair (dpr_pg.encoders.tiny: real Spanish WordPiece tokenizer, 2 layers, hidden 32, projected to 768-d)
vs its first ingest (encoding + writing, HNSW index maintained).

Run under the shared lock:  flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_ingest.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _database
import numpy as np

DIM = 768


def passages(n: int, seed: int = 0) -> list[dict]:
    from dpr_pg.encoders.tiny import spanish_sentences

    sentences = spanish_sentences()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        picks = rng.integers(0, len(sentences), 8)
        out.append({"id": f"p{i:07d}", "title": f"Artículo {i % 997}",
                    "text": " ".join(sentences[j] for j in picks), "lang": "es", "n": i})
    return out


def write_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    source, emb = folder / f"in{n}.jsonl", folder / f"in{n}.npy"
    if not source.exists():
        with open(source, "w", encoding="utf-8") as handle:
            for start in range(0, n, 100_000):
                for record in passages(min(100_000, n - start), seed=start):
                    record["id"] = f"p{start + int(record['id'][1:]):07d}"
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        rng = np.random.default_rng(1)
        array = np.lib.format.open_memmap(emb, mode="w+", dtype=np.float32, shape=(n, DIM))
        for start in range(0, n, 100_000):
            array[start:start + 100_000] = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        array.flush()
        del array
    return source, emb


def fresh_database(admin_url: str, name: str, *, drop_hnsw: bool = True) -> str:
    """A new database with dpr_pg's schema, without its HNSW index unless ``drop_hnsw`` is False."""
    import sqlalchemy as sa

    from dpr_pg.db.index import drop_hnsw as drop

    url = _database.fresh_database(admin_url, name, dim=DIM)
    if drop_hnsw:
        engine = sa.create_engine(url)
        drop(engine)
        engine.dispose()
    return url


FINGERPRINT_ARGS = ("bench/question", "r1", "bench/passage", "r1", "tok", DIM, 512)


def encoder_id(engine) -> int:  # noqa: ANN001
    from dpr_pg.encoders.fingerprint import EncoderFingerprint, register_encoder

    with engine.begin() as conn:
        return register_encoder(conn, EncoderFingerprint(*FINGERPRINT_ARGS))


def load_inputs(source: Path, emb: Path) -> tuple[list[dict], np.ndarray]:
    """What the baselines load whole, as a user's script would: every record and every vector."""
    with open(source, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle], np.load(emb)


def method_orm(url: str, source: Path, emb: Path) -> int:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from dpr_pg.ingest import content_hash
    from dpr_pg.db.models import Passage

    engine = sa.create_engine(url)
    eid = encoder_id(engine)
    records, vectors = load_inputs(source, emb)
    with Session(engine) as session:
        session.add_all([
            Passage(collection="bench", external_id=r["id"], title=r["title"], text=r["text"],
                    metadata_={"lang": r["lang"], "n": r["n"]},
                    content_hash=content_hash(r["title"], r["text"], "{}", "x"), embedding=vectors[i], encoder_id=eid)
            for i, r in enumerate(records)])
        session.commit()
    return len(records)


def method_executemany(url: str, source: Path, emb: Path) -> int:
    import sqlalchemy as sa
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    from dpr_pg.ingest import content_hash

    engine = sa.create_engine(url)
    eid = encoder_id(engine)
    records, vectors = load_inputs(source, emb)
    raw = engine.raw_connection()
    conn = raw.driver_connection
    register_vector(conn)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) VALUES ('bench', %s, %s, %s, %s, %s, %s, %s)",
            [(r["id"], r["title"], r["text"], Jsonb({"lang": r["lang"], "n": r["n"]}),
              content_hash(r["title"], r["text"], "{}", "x"), vectors[i], eid) for i, r in enumerate(records)])
    conn.commit()
    raw.close()
    return len(records)


def method_dpr_pg(url: str, source: Path, emb: Path) -> int:
    import sqlalchemy as sa

    from dpr_pg.encoders.fingerprint import EncoderFingerprint
    from dpr_pg.ingest import ingest

    engine = sa.create_engine(url)
    report = ingest(engine, None, source, collection="bench", embeddings=emb,
                    fingerprint=EncoderFingerprint(*FINGERPRINT_ARGS))
    assert report.inserted == report.read, report.as_dict()
    return report.inserted


def method_ceiling(url: str, source: Path, emb: Path) -> tuple[int, float]:
    """Not a way to load passages: the most any method could write these vectors on this machine.
    Ready-made binary COPY payloads of (id, vector) only, built before the clock starts, into a bare
    table (no index, no text, no tsvector), on two connections in parallel like (c); median of 3 runs."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from dpr_pg.db.engine import libpq_url
    from dpr_pg.ingest.copybin import copy_payload

    vectors = np.load(emb)
    ids = [f"p{i:07d}" for i in range(len(vectors))]
    payloads = [copy_payload([(key,) for key in ids[s:s + 2000]], vectors[s:s + 2000])
                for s in range(0, len(ids), 2000)]
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.bare (id text NOT NULL, embedding vector({DIM}) NOT NULL)")
        conn.execute("ALTER TABLE public.bare ALTER COLUMN embedding SET STORAGE PLAIN")

    def write(part: list[bytes]) -> None:
        with psycopg.connect(libpq_url(url)) as conn:
            for payload in part:
                with conn.transaction(), conn.cursor() as cur, \
                        cur.copy("COPY public.bare FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.write(payload)

    seconds = []
    for _ in range(3):  # about a second each: the median of three
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("TRUNCATE public.bare")
            conn.execute("CHECKPOINT")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as executor:
            list(executor.map(write, [payloads[0::2], payloads[1::2]]))
        seconds.append(time.perf_counter() - started)
    return len(ids), sorted(seconds)[1]


METHODS = {"orm": method_orm, "executemany": method_executemany, "dpr_pg": method_dpr_pg, "ceiling": method_ceiling}


def child(method: str, url: str, source: Path, emb: Path) -> None:
    started = time.perf_counter()
    rows = METHODS[method](url, source, emb)
    seconds = time.perf_counter() - started
    if isinstance(rows, tuple):  # the method timed its own part (the ceiling leaves out building payloads)
        rows, seconds = rows
    # VmHWM is this process's own high-water mark; ru_maxrss would include the parent's RSS at fork.
    with open("/proc/self/status") as status:
        peak_mib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"method": method, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                      "peak_rss_mib": peak_mib}))


def run_child(method: str, url: str, source: Path, emb: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--url", url, "--source", str(source),
                          "--emb", str(emb)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reingest(admin_url: str, folder: Path, n: int) -> tuple:
    import sqlalchemy as sa

    from dpr_pg.encoders.pair import EncoderPair, make_tiny_models
    from dpr_pg.ingest import ingest

    url = fresh_database(admin_url, "bench_reingest", drop_hnsw=False)
    engine = sa.create_engine(url)
    question, passage = make_tiny_models(folder / "tiny", dim=DIM)
    pair = EncoderPair.load(str(question), str(passage), precision="fp32")
    source = folder / f"corpus{n}.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in passages(n, seed=7)), encoding="utf-8")
    first = ingest(engine, pair, source, collection="c")
    again = ingest(engine, pair, source, collection="c")
    assert (again.inserted, again.updated, again.encoded) == (0, 0, 0), again.as_dict()
    print(f"\nre-ingest of an unchanged {n}-passage corpus (tiny encoder, HNSW maintained):")
    print(f"  first ingest  {first.seconds:8.2f} s  (encoded {first.encoded}, {first.passages_per_second} passages/s)")
    print(f"  re-ingest     {again.seconds:8.2f} s  (encoded 0, written 0)")
    print(f"  ratio         {first.seconds / again.seconds:8.1f}x faster (target >= 100x)  [measured]")
    return first, again


def reingest_base(admin_url: str, folder: Path, n: int, again_seconds: float, passages_total: int,
                  precision: str | None = "fp32") -> None:
    """First ingest of ``n`` passages with a BERT-base-shaped random DPR pair (the encode cost of a real
    one), scaled to the re-ingest corpus: the >= 100x target is stated 'with the encoder'."""
    import sqlalchemy as sa

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_encoders import make_base_models

    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.ingest import ingest

    url = fresh_database(admin_url, "bench_reingest_base", drop_hnsw=False)
    engine = sa.create_engine(url)
    question, passage = make_base_models(folder / "base", seed=0, init_std=0.06)
    pair = EncoderPair.load(question, passage, precision=precision)
    source = folder / f"base{n}.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in passages(n, seed=7)), encoding="utf-8")
    first = ingest(engine, pair, source, collection="c")
    again = ingest(engine, pair, source, collection="c")
    assert (again.inserted, again.updated, again.encoded) == (0, 0, 0), again.as_dict()
    per_passage = first.seconds / first.passages
    projected = per_passage * passages_total
    print(f"\nfirst ingest with a BERT-base-shaped random DPR pair ({pair.passage.precision} on "
          f"{pair.passage.device.type}, 12 layers, hidden 768), {n} records:")
    print(f"  {first.passages} passages in {first.seconds:.1f} s = {per_passage * 1000:.0f} ms/passage  [measured]")
    print(f"  re-ingest of the same {n} records: {again.seconds:.2f} s -> {first.seconds / again.seconds:.0f}x  [measured]")
    print(f"  the {passages_total}-passage corpus at that rate: {projected:.0f} s; re-ingest {again_seconds:.2f} s "
          f"-> {projected / again_seconds:.0f}x  [extrapolated first ingest, measured re-ingest]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="rows for (a), (b), (c)")
    parser.add_argument("--reingest-n", type=int, default=10_000)
    parser.add_argument("--base-n", type=int, default=200, help="records for the BERT-base first-ingest timing (0: skip)")
    parser.add_argument("--methods", default="orm,executemany,dpr_pg")
    parser.add_argument("--rss-n", type=int, nargs="*", default=[], help="extra N for (c) alone: peak RSS vs N")
    parser.add_argument("--no-index-build", action="store_true", help="skip timing the HNSW build after (c)")
    parser.add_argument("--base-precision", default="fp32",
                        help="precision of the BERT-base first ingest ('auto': the device's default)")
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--emb", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.source, args.emb)
        return
    folder = Path(tempfile.mkdtemp(prefix="dpr_bench_"))
    os.environ.setdefault("DPR_PG_HOME", str(folder / "home"))
    from dpr_pg.db.engine import embedded_url
    from dpr_pg.db.index import ensure_hnsw

    admin_url = embedded_url()
    source, emb = write_inputs(folder, args.n)
    print(f"N = {args.n} passages, {DIM}-d float32 vectors; one run per method, each in its own process")
    results = {}
    for method in filter(None, args.methods.split(",")):  # --methods "" skips (a)-(d)
        url = fresh_database(admin_url, f"bench_{method}")
        results[method] = run_child(method, url, source, emb)
        r = results[method]
        print(f"  ({'abcd'[list(METHODS).index(method)]}) {method:12s} {r['rows_per_s']:10.0f} rows/s  "
              f"{r['seconds']:8.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
        if method == "dpr_pg" and not args.no_index_build:
            import sqlalchemy as sa

            engine = sa.create_engine(url)
            started = time.perf_counter()
            ensure_hnsw(engine)
            print(f"      + HNSW build once after (c): {time.perf_counter() - started:.1f} s")
    if "orm" in results:
        for method, r in results.items():
            print(f"  ratio {method:12s} / orm = {r['rows_per_s'] / results['orm']['rows_per_s']:6.1f}x")
    for n in args.rss_n:
        extra_source, extra_emb = write_inputs(folder, n)
        r = run_child("dpr_pg", fresh_database(admin_url, "bench_rss"), extra_source, extra_emb)
        print(f"  (c) dpr_pg at N={n}: {r['rows_per_s']:.0f} rows/s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    if args.reingest_n:
        _, again = reingest(admin_url, folder, args.reingest_n)
        if args.base_n:
            reingest_base(admin_url, folder, args.base_n, again.seconds, again.passages,
                          precision=None if args.base_precision == "auto" else args.base_precision)


if __name__ == "__main__":
    main()
