"""Benchmark: how long `dpr-pg search` takes from the command to its first hit, a new process each run.

Every run is a fresh process (its imports and model loading included), on the bundled Spanish
sample ingested into an embedded PostgreSQL that this script keeps up; the OS file cache is warm
(the same files are read every run), which is what a user typing commands one after another gets.
Commands run round-robin, so load from other processes falls on all of them alike.

  imports, baseline   python -c "from transformers import DPRQuestionEncoder, DPRContextEncoder, ...": what
                      every model-loading command paid before it could read a weight
  imports, contender  python -c "import onnxruntime, tokenizers": what the cached question path imports instead
  search, before      the search of another source tree (--baseline-tree, e.g. `git archive main`): both
                      encoders loaded on torch
  search, torch       this tree with --runtime torch: the question encoder on torch, the passage side's
                      config and tokenizer only
  search, auto        this tree's default: the question encoder from the cached ONNX graph, no torch import
  help, before/now    `dpr-pg --help` of the other source tree and of this one, to its exit: the cost of
                      importing the command line itself
  import, before/now  python -c "import dpr_pg" of the other source tree and of this one: what an
                      application pays to import the package (its names load on first use)

Usage:
    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_startup.py --runs 7
    git archive main | tar -x -C /tmp/main-src
    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_startup.py --runs 7 --size base --baseline-tree /tmp/main-src
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "¿Quién pintó el Guernica?"
IMPORT_DPR = ("from transformers import DPRQuestionEncoder, DPRContextEncoder, DPRQuestionEncoderTokenizerFast, "
              "DPRContextEncoderTokenizerFast")
IMPORT_CACHED = "import onnxruntime, tokenizers"


def time_to_first_output(command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``command`` to the first byte it prints (the first hit); it must then exit 0."""
    started = time.perf_counter()
    # Not from the checkout: `python -m` puts the working folder first on sys.path, before PYTHONPATH.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    assert process.stdout is not None
    first = process.stdout.read(1)
    seconds = time.perf_counter() - started
    rest, errors = process.communicate()
    if process.returncode != 0 or not first:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {errors.decode()[-2000:]}")
    return seconds


def time_to_exit(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


def make_models(folder: Path, size: str) -> tuple[str, str]:
    if size == "tiny":
        from dpr_pg.encoders.pair import make_tiny_models

        question, passage = make_tiny_models(folder, dim=768)
        return str(question), str(passage)
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_encoders import make_base_models  # a BERT-base-shaped random pair: the IIC models' compute

    return make_base_models(folder, seed=0, init_std=0.06)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="Runs of each command (medians are reported).")
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny",
                        help="tiny: the test models (2 layers); base: BERT-base-shaped random weights (12 layers).")
    parser.add_argument("--baseline-tree", type=Path, help="Another source tree whose search is the 'before' row.")
    args = parser.parse_args()

    from dpr_pg.db.engine import embedded_server

    work = Path(tempfile.mkdtemp(prefix="dpr_pg_startup_"))
    try:
        handle = embedded_server(home=work / "home")  # kept up by this process for every run
        url = handle.url()  # libpq form
        question_model, passage_model = make_models(work / "models", args.size)
        env = {**os.environ, "DPR_PG_DATABASE_URL": url, "DPR_PG_QUESTION_MODEL": question_model,
               "DPR_PG_PASSAGE_MODEL": passage_model, "DPR_PG_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        cli = [sys.executable, "-m", "dpr_pg.cli"]
        subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "ingest", str(ROOT / "dpr_pg" / "data" / "sample_es.jsonl"), "--collection", "demo"],
                       env=env, check=True, capture_output=True)
        search = ["search", QUESTION, "--collection", "demo", "-k", "1", "--json"]
        warm = time_to_first_output([*cli, *search], env)  # exports the question encoder once, for the cached runs
        print(f"{args.size} models; first auto search (exports the ONNX graph once): {warm:.2f} s", flush=True)

        commands: dict[str, tuple[list[str], dict[str, str], bool]] = {
            "imports, baseline (DPR classes)": ([sys.executable, "-c", IMPORT_DPR], env, False),
            "imports, contender (onnxruntime, tokenizers)": ([sys.executable, "-c", IMPORT_CACHED], env, False),
        }
        if args.baseline_tree:
            before_env = {**env, "PYTHONPATH": str(args.baseline_tree.resolve())}
            commands["help, before (--baseline-tree)"] = ([*cli, "--help"], before_env, False)
            commands["import dpr_pg, before (--baseline-tree)"] = ([sys.executable, "-c", "import dpr_pg"], before_env,
                                                                   False)
            commands["search, before (--baseline-tree)"] = ([*cli, *search], before_env, True)
        commands["help, now"] = ([*cli, "--help"], env, False)
        commands["import dpr_pg, now"] = ([sys.executable, "-c", "import dpr_pg"], env, False)
        commands["search, torch (--runtime torch)"] = ([*cli, *search, "--runtime", "torch"], env, True)
        commands["search, auto (cached ONNX)"] = ([*cli, *search], env, True)

        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, (command, command_env, to_first_hit) in commands.items():
                measure = time_to_first_output if to_first_hit else time_to_exit
                times[name].append(measure(command, command_env))

        print(f"\n{args.runs} runs each, round-robin, seconds (median, min-max); python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            print(f"  {name:48s} {medians[name]:6.2f}  ({min(values):.2f}-{max(values):.2f})")
        base = medians["imports, baseline (DPR classes)"]
        print(f"\nimports: baseline / contender = {base / medians['imports, contender (onnxruntime, tokenizers)']:.1f}x")
        if "help, before (--baseline-tree)" in medians:
            print(f"help: before / now = {medians['help, before (--baseline-tree)'] / medians['help, now']:.1f}x")
            print(f"import dpr_pg: before / now = "
                  f"{medians['import dpr_pg, before (--baseline-tree)'] / medians['import dpr_pg, now']:.2f}x")
        for reference in ("search, before (--baseline-tree)", "search, torch (--runtime torch)"):
            if reference in medians:
                print(f"search: {reference.split(', ', 1)[1]} / auto = "
                      f"{medians[reference] / medians['search, auto (cached ONNX)']:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
