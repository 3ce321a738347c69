"""Several `hwnas search` workers on one study: do they end with exactly --trials finished trials?

Starts ``--workers`` separate ``hwnas search`` processes (as on several machines) on one storage,
together or ``--apart`` seconds apart, waits for them, and prints what the storage holds: finished
trials, trials in every state, distinct trial numbers, each worker's exit code and last stderr line.
Use a fresh database (or a new ``--study``) to see the start-up race on table creation.

    python benchmarks/search_workers.py RUN --storage postgresql://user@host/db [--target local]
        [--trials 12] [--workers 2] [--apart 0] [--study NAME] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna

from hwnas.search.storage import open_storage, redact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--storage", required=True)
    p.add_argument("--target", default="local")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--apart", type=float, default=0.0, help="seconds between worker starts (default together)")
    p.add_argument("--study", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "hwnas", "-q", "search", str(args.run), "--target", args.target]
    cmd += ["--trials", str(args.trials), "--storage", args.storage] + (["--study", args.study] if args.study else [])
    started = time.perf_counter()
    procs = []
    for i in range(args.workers):
        if i and args.apart:
            time.sleep(args.apart)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate()[1].strip().splitlines()[-1:] for p in procs]
    seconds = time.perf_counter() - started
    storage = open_storage(args.storage)
    name = args.study or f"latency-{args.target}"
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    report = {
        "storage": redact(args.storage),
        "study": name,
        "workers": args.workers,
        "apart_s": args.apart,
        "trials_asked": args.trials,
        "finished": states.get("COMPLETE", 0),
        "states": dict(states),
        "distinct_numbers": len({t.number for t in trials}) == len(trials),
        "exit_codes": [p.returncode for p in procs],
        "last_errors": [e[0] if e else "" for e in errors],
        "seconds": round(seconds, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:17s} {value}")


if __name__ == "__main__":
    main()
