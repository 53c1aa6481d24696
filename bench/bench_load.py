"""Bulk load benchmark: precomputed 768-d vectors loaded and indexed as a user runs it, per storage.

What a user runs, timed as separate processes on the embedded PostgreSQL:

    dpr-pg init --dim 768 --storage STORAGE
    dpr-pg ingest records.jsonl --collection bench --embeddings vectors.npy --defer-index --json \\
        --question-model Q --passage-model P

``--defer-index`` drops the HNSW index, loads, and builds the index once at the end; the report's
``index_seconds`` splits the wall time into the load and the index build (a ``dpr-pg index``
afterwards would build it a second time, so it is not run). For each run the script records:

- the wall time of the ingest process, and its stages (load; index build);
- the client's peak RSS (``VmHWM`` of its own address space, sampled every 0.2 s; ``ru_maxrss`` from
  ``wait4`` is printed too, but it is an upper bound only: exec folds in the forking parent's peak)
  and its CPU time (user + sys);
- the server's CPU time (user + sys of the postmaster and every backend and parallel worker, including
  those that ended: the postmaster's ``cutime``/``cstime``) and the peak of the server processes'
  summed anonymous RSS (private memory; ``shared_buffers`` is counted apart);
- the load averages (``/proc/loadavg``) at the start, every 10 s and at the end: on a shared machine
  the wall time depends on them, the CPU times much less.

Inputs: ``--rows`` clustered vectors (bench_search's shape: centres N(0, 1), noise 0.8, seeded) in a
``.npy``, and a JSONL of records (id, title, a ~50-word Spanish text, metadata) under ``--folder``
(default /tmp), deleted at the end with the databases and the server.

Baseline and contender in one process: ``--baseline-ref REF`` (default ``main``) runs the same
commands with the package as of that git ref (``git archive`` into the work folder, first on
``PYTHONPATH``), alternating with this checkout, ``--runs`` times each; medians and ratios are printed.
``--baseline-ref none`` runs this checkout only (the 1M run).

Run under the shared lock:
    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_load.py --rows 100000 --runs 2
    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_load.py --rows 1000000 --baseline-ref none \\
        --storages vector,halfvec
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _database import drop_database, fresh_database

DIM = 768
NOISE = 0.8
WORDS = 50
STEP = 50_000
HERE = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def write_inputs(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """``rows`` clustered float32 vectors in a .npy and as many JSONL records, written in steps."""
    from dpr_pg.encoders.tiny import spanish_sentences

    emb, source = folder / f"vectors{rows}.npy", folder / f"records{rows}.jsonl"
    if emb.exists() and source.exists():  # made before (--inputs)
        return source, emb
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, rows // 1000), DIM)).astype(np.float32)
    array = np.lib.format.open_memmap(emb, mode="w+", dtype=np.float32, shape=(rows, DIM))
    for start in range(0, rows, STEP):
        n = min(STEP, rows - start)
        array[start:start + n] = centers[rng.integers(0, len(centers), n)] + rng.normal(
            scale=NOISE, size=(n, DIM)).astype(np.float32)
    array.flush()
    del array
    sentences = spanish_sentences()
    with open(source, "w", encoding="utf-8") as handle:
        for start in range(0, rows, STEP):
            lines = []
            picks = rng.integers(0, len(sentences), (min(STEP, rows - start), 12))
            for offset, row in enumerate(picks):
                i = start + offset
                words: list[str] = []
                for j in row:
                    words.extend(sentences[j].split())
                    if len(words) >= WORDS:
                        break
                lines.append(json.dumps({"id": f"p{i:07d}", "title": f"Artículo {i % 997}",
                                         "text": " ".join(words[:WORDS]), "lang": "es", "n": i,
                                         "bucket": int(i % 100)}, ensure_ascii=False))
            handle.write("\n".join(lines) + "\n")
    return source, emb


def _stat(pid: int) -> tuple[int, ...]:
    """(utime, stime, cutime, cstime) in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return tuple(int(v) for v in fields[11:15])


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(v) for v in handle.read().split()]
    except OSError:
        return []


def _anon_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def server_cpu(postmaster: int) -> float:
    """Seconds of CPU (user + sys) of the server so far: the postmaster, its ended and its live children."""
    total = sum(_stat(postmaster))
    for child in _children(postmaster):
        try:
            utime, stime, _, _ = _stat(child)
            total += utime + stime
        except OSError:  # ended meanwhile: it is in the postmaster's cutime now, or will be
            pass
    return total / TICKS


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as handle:
        one, five, fifteen = handle.read().split()[:3]
    return float(one), float(five), float(fifteen)


class Sampler(threading.Thread):
    """Samples the client's VmHWM, the server's summed anonymous RSS and the load average until stopped."""

    def __init__(self, client: int, postmaster: int) -> None:
        super().__init__(daemon=True)
        self.client, self.postmaster = client, postmaster
        self.client_hwm = self.server_anon = 0
        self.loads: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last_load = 0.0
        while True:
            self.client_hwm = max(self.client_hwm, _hwm(self.client))
            pids = [self.postmaster, *_children(self.postmaster)]
            self.server_anon = max(self.server_anon, sum(_anon_rss(pid) for pid in pids))
            if time.monotonic() - last_load >= 10:
                self.loads.append(loadavg()[0])
                last_load = time.monotonic()
            if self.stop.wait(0.2):
                self.loads.append(loadavg()[0])
                return


def dpr_pg_command() -> list[str]:
    code = "import sys; from dpr_pg.cli import main; sys.argv[0] = 'dpr-pg'; main()"
    return [sys.executable, "-c", code]


def run_client(args: list[str], *, baseline: Path | None, postmaster: int, log: Path) -> dict:
    """Run one dpr-pg command; its wall time, CPU, peak RSS, the server's CPU and the load meanwhile."""
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline) + os.pathsep + env.get("PYTHONPATH", "")
    server_before, load_before = server_cpu(postmaster), loadavg()
    started = time.perf_counter()
    with open(log, "ab") as err:
        process = subprocess.Popen([*dpr_pg_command(), *args], stdout=subprocess.PIPE, stderr=err, env=env,
                                   cwd=log.parent)
        sampler = Sampler(process.pid, postmaster)
        sampler.start()
        out = process.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0,):
        raise SystemExit(f"{' '.join(args[:3])} failed with exit code {process.returncode}; see {log}")
    return {"wall": wall, "client_cpu": usage.ru_utime + usage.ru_stime, "client_user": usage.ru_utime,
            "client_sys": usage.ru_stime, "client_peak_mib": sampler.client_hwm / 2**20,
            "client_maxrss_mib": usage.ru_maxrss / 1024,
            "server_cpu": server_cpu(postmaster) - server_before, "server_anon_mib": sampler.server_anon / 2**20,
            "load_before": load_before[0], "load_max": max(sampler.loads or [0.0]),
            "load_mean": statistics.fmean(sampler.loads) if sampler.loads else 0.0, "stdout": out.decode()}


def check_index(url: str, rows: int, storage: str) -> str:
    """The index is there, valid, of the storage's type, and the table holds every row."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar()
        valid, definition, size = conn.execute(sa.text(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid), pg_relation_size(i.indexrelid) FROM pg_index i "
            "WHERE i.indexrelid = to_regclass('dpr_pg.passages_embedding_hnsw')")).one()
        table = conn.execute(sa.text("SELECT pg_total_relation_size('dpr_pg.passages')")).scalar()
    engine.dispose()
    assert count == rows, (count, rows)
    assert valid, definition
    assert (storage == "halfvec") == ("halfvec" in definition), definition
    return f"{count} rows, index valid, {size / 2**20:.0f} MiB; table + indexes {table / 2**30:.2f} GiB"


def one_run(admin_url: str, folder: Path, source: Path, emb: Path, models: tuple[Path, Path], *, rows: int,
            storage: str, baseline: Path | None, label: str, postmaster: int) -> dict:
    name = f"bench_load_{label}_{storage}"
    url = fresh_database(admin_url, name)
    log = folder / f"{name}.log"
    common = ["--database-url", url]
    run_client([*common, "init", "--dim", str(DIM), "--storage", storage], baseline=None, postmaster=postmaster,
               log=log)
    result = run_client([*common, "ingest", str(source), "--collection", "bench", "--embeddings", str(emb),
                         "--question-model", str(models[0]), "--passage-model", str(models[1]),
                         "--defer-index", "--json", "--progress"], baseline=baseline, postmaster=postmaster, log=log)
    report = json.loads(result.pop("stdout"))
    assert report["inserted"] == rows and report["rejected"] == 0, report
    result["index"] = report["index_seconds"] or 0.0
    result["ingest"] = report["seconds"]
    result["load"] = report["seconds"] - result["index"]
    result["startup"] = result["wall"] - report["seconds"]  # imports, engine, schema check: outside the report
    result["stages"] = {stage: report.get(f"{stage}_seconds") or 0.0 for stage in ("read", "lookup", "write")}
    result["writers"] = report.get("writers")
    result["checked"] = check_index(url, rows, storage)
    result["progress"] = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()
                          if "maintenance_work_mem" in line][:1]
    drop_database(admin_url, name)
    return result


def show(label: str, storage: str, r: dict) -> None:
    print(f"  {label:10s} {storage:8s} wall {r['wall']:7.1f} s = load {r['load']:7.1f} + index {r['index']:7.1f} "
          f"+ start {r['startup']:4.1f} | client peak RSS {r['client_peak_mib']:6.0f} MiB "
          f"(ru_maxrss {r['client_maxrss_mib']:.0f}), CPU {r['client_cpu']:6.1f} s "
          f"| server CPU {r['server_cpu']:7.1f} s, anon RSS {r['server_anon_mib']:6.0f} MiB "
          f"| load avg {r['load_before']:.2f} -> max {r['load_max']:.2f} (mean {r['load_mean']:.2f})", flush=True)
    busy = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in r["stages"].items())
    print(f"             busy: {busy}, {r['writers']} writers; {r['checked']}", flush=True)
    print(f"             {' '.join(r['progress'])[:160]}", flush=True)


def baseline_tree(ref: str, folder: Path) -> Path:
    target = folder / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE), "archive", ref, "dpr_pg", "sql", "migrations"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--storages", default="vector", help="comma-separated: vector, halfvec")
    parser.add_argument("--runs", type=int, default=2, help="runs of each of baseline and contender, alternating")
    parser.add_argument("--baseline-ref", default="main", help="git ref of the baseline ('none': contender only)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp"), help="where the inputs and the server go")
    parser.add_argument("--inputs", type=Path, help="a folder for the inputs, made there if missing and kept "
                        "(to make them outside the benchmark's lock: --make-inputs)")
    parser.add_argument("--make-inputs", action="store_true", help="only write the inputs into --inputs")
    args = parser.parse_args()
    if args.make_inputs:
        args.inputs.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        source, emb = write_inputs(args.inputs, args.rows)
        print(f"{source}, {emb} in {time.perf_counter() - started:.0f} s")
        return
    folder = Path(tempfile.mkdtemp(prefix="dpr_load_", dir=args.folder))
    os.environ["DPR_PG_HOME"] = str(folder / "home")
    os.environ.pop("DPR_PG_DATABASE_URL", None)
    from dpr_pg.db.embedded import join, leave, stop_server
    from dpr_pg.encoders.pair import make_tiny_models

    try:
        print(f"{os.cpu_count()} cores; load average at start {loadavg()}; folder {folder}", flush=True)
        started = time.perf_counter()
        source, emb = write_inputs(args.inputs or folder, args.rows)
        print(f"inputs: {args.rows} x {DIM} float32 ({emb.stat().st_size / 2**30:.2f} GiB) + JSONL "
              f"({source.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s", flush=True)
        models = make_tiny_models(folder / "models", dim=DIM)
        server = join()
        admin_url = server.url(driver="psycopg")
        postmaster = server.pid
        baseline = None if args.baseline_ref == "none" else baseline_tree(args.baseline_ref, folder)
        labels = [("contender", None)] if baseline is None else [("baseline", baseline), ("contender", None)]
        results: dict[tuple[str, str], list[dict]] = {}
        for storage in args.storages.split(","):
            for run in range(args.runs if baseline is not None else 1):
                order = labels if run % 2 == 0 else labels[::-1]
                for label, tree in order:
                    r = one_run(admin_url, folder, source, emb, models, rows=args.rows, storage=storage,
                                baseline=tree, label=label, postmaster=postmaster)
                    results.setdefault((label, storage), []).append(r)
                    show(label, storage, r)
        print(f"\nmedians ({args.rows} rows; wall and CPU in s, RSS in MiB):")
        keys = ("wall", "load", "index", "client_peak_mib", "client_cpu", "server_cpu")
        print(f"  {'':10s} {'storage':8s} " + " ".join(f"{k:>15s}" for k in keys))
        for (label, storage), runs in results.items():
            print(f"  {label:10s} {storage:8s} " + " ".join(f"{statistics.median(r[k] for r in runs):15.1f}"
                                                          for k in keys))
            if label == "contender" and ("baseline", storage) in results:
                base = results[("baseline", storage)]
                print(f"  {'ratio c/b':10s} {storage:8s} " + " ".join(
                    f"{statistics.median(r[k] for r in runs) / max(statistics.median(b[k] for b in base), 1e-9):15.2f}"
                    for k in keys))
        for (label, storage), runs in results.items():
            for r in runs:
                quiet = r["client_cpu"] + r["server_cpu"]
                print(f"  {label} {storage}: client + server CPU {quiet:.0f} s over {r['wall']:.0f} s wall "
                      f"({quiet / r['wall']:.2f} cores busy of {os.cpu_count()})")
    finally:
        try:
            leave()
            stop_server(force=True)
        except Exception as e:  # noqa: BLE001 - report, then still delete the folder
            print(f"stopping the server: {e}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
