"""Run every bench script and write one markdown table of their results to runs/bench.md.

    ./dev bench --quick         # each script at a small scale (a few minutes on 2 cores)
    ./dev bench                 # the scripts' defaults: the README's figures (hours)
    ./dev bench --quick muse    # only some scripts

Each script runs in its own process and reports its figures as ``BENCH-RESULT {json}`` lines
(bench/_report.py); the table has one row per (bench, case), the union of the figures as
columns and the wall time of the script that made the row. A script that fails or times out
gives a row with its exit status and the last line of its stderr, and this exits non-zero.
The full output of each script is kept in runs/bench/<script>.log. npe_vs_sbi, tmnre_vs_swyft,
abc_vs_pyabc and gold_vs_madminer need their peers (sbi, swyft, pyabc, madminer) in their own environment, .venv-peers, and are skipped without it. bench/make_task_data.py is a
data tool (it regenerates the tasks' shipped observations), not a benchmark, and is not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# script: (its arguments at the quick scale, at full scale)
SCRIPTS = {
    "simulate": (["--n", "5000", "--n-loop", "200"], []),
    # (full: the comparison at 10,000 latents, then MUSE and NUTS cold up to 10^6 latents, NUTS there for most of an hour)
    "muse": (["--dim", "500", "--nsims", "20", "--repeats", "2"], ["--dim", "10000", "--dims", "10000", "100000", "1000000"]),
    "muse_parameters": (["--per-group", "100", "--nsims", "300"], []),
    "muse_starts": (["--only", "lognormal", "--starts", "3"], []),
    "sbibm": (["--tasks", "two_moons", "--methods", "npe", "--budgets", "500", "--observations", "1"], []),
    "npe_vs_sbi": (["--observations", "1", "--budget", "1000", "--galton-flows", "maf"], []),
    "tmnre": (["--tasks", "two_moons", "--observations", "1", "--budget", "2000", "--rounds", "2", "--skip-narrow"], []),
    "tmnre_vs_swyft": (["--tasks", "two_moons", "--observations", "1", "--rounds", "2", "--per-round", "1000", "--epochs", "20"], []),
    "abc_vs_pyabc": (["--tasks", "two_moons", "--observations", "1", "--budget", "5000", "--population", "200"], []),
    "summaries": (["--observations", "1", "--train", "300", "--budget", "200", "--epochs", "2", "--patience", "2",
                   "--smc-budget", "3000", "--channels", "4", "4", "4"], []),
    "population": (["--objects", "30", "--budget", "3000", "--seeds", "1", "--ensemble", "2"], []),
    "nuts": (["--dims", "10", "1000", "--samples", "500"], []),
    "ic": (["--dims", "10", "100", "--budget", "5000", "--epochs", "10", "--mixture-budget", "5000"], []),
    "gold_vs_madminer": (["--budgets", "3000", "--seeds", "0", "--epochs", "20"], []),
    "gold": (["--tasks", "galton_board", "--budgets", "1000", "--methods", "carl", "alices", "npe", "score_npe", "--fisher-seeds", "1"], []),
}
PEERS = ROOT / ".venv-peers" / "bin" / "python"


def run(script: str, args: list[str], timeout: float, log: Path) -> tuple[list[dict], float, str | None]:
    """Run one script; its reported rows, its wall time and why it failed (None if it did not)."""
    start = time.perf_counter()
    # a session of its own, so that a timeout ends the workers the script started too
    proc = subprocess.Popen([sys.executable, f"bench/{script}.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        failure = None if proc.returncode == 0 else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        failure = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    log.write_text(f"$ {shlex.join(proc.args)}\n{out}\n--- stderr ---\n{err}")
    rows = [json.loads(line.removeprefix("BENCH-RESULT ")) for line in out.splitlines() if line.startswith("BENCH-RESULT ")]
    if failure:
        last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), None)
        rows.append({"bench": script, "case": f"FAILED: {failure}", "stderr": last})
    return rows, seconds, failure


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT", help=f"the scripts to run (default: all of {', '.join(SCRIPTS)})")
    parser.add_argument("--quick", action="store_true", help="each script at a small scale")
    parser.add_argument("--timeout", type=float, help="seconds per script (default: 600 with --quick, 24 h without)")
    args = parser.parse_args(argv)
    if unknown := set(args.scripts) - set(SCRIPTS):
        parser.error(f"no such bench script: {', '.join(sorted(unknown))}")
    timeout = args.timeout or (600 if args.quick else 24 * 3600)
    logs = ROOT / "runs" / "bench"
    logs.mkdir(parents=True, exist_ok=True)

    rows, failed, start = [], [], time.perf_counter()
    for script in args.scripts or SCRIPTS:
        if script in ("npe_vs_sbi", "tmnre_vs_swyft", "abc_vs_pyabc", "gold_vs_madminer") and not PEERS.exists():
            rows.append({"bench": script, "case": "skipped: peer environment .venv-peers missing (see bench/requirements-peers.txt)"})
            print(f"{script}: skipped (no .venv-peers)", file=sys.stderr)
            continue
        script_rows, seconds, failure = run(script, SCRIPTS[script][0 if args.quick else 1], timeout, logs / f"{script}.log")
        rows += [{"bench": row["bench"], "case": row["case"], "script_s": seconds, **row} for row in script_rows]
        failed += [script] if failure else []
        print(f"{script}: {failure or 'done'} in {seconds:.0f} s", file=sys.stderr)

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    command = shlex.join(["python", "bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, commit {commit or '?'}, `{command}`, "
              f"{os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s in all")
    report = f"{header}\n\n{table(rows)}\n"
    (ROOT / "runs" / "bench.md").write_text(report)
    print(report)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
