"""Search speed and search quality, measured side by side in one run.

1. Latency predictions per second: one batched ``predict_many`` call over 10,000 random subnets,
   and single ``predict`` calls (goal: the predictor is never the bottleneck, >= 10,000/s batched).
2. Trials per second of a latency search (TPE) with the accuracy replaced by a cheap proxy (a
   function of the arch), and with the real supernet accuracy (BN recalibration + validation
   split), both on a SQLite study as ``hwnas search`` runs it.
3. Search quality at equal budget: ``--trials`` accuracy evaluations per search, ``--seeds``
   seeds, samplers TPE, NSGA-II, GP, the authors' evolution (nasbnn) and hwnas's interval
   evolution (intervals); hypervolume of each search's trials in (accuracy, predicted latency)
   space, one reference point for all (accuracy 0, latency 1.1x the slowest subnet seen).
   Accuracies are cached across searches (one arch, one accuracy).

    python benchmarks/search.py [--run hwnas-out/supernet] [--target local] [--trials 60] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hwnas.search.encoding import Encoding
from hwnas.search.hypervolume import hypervolume
from hwnas.search.objectives import AccuracyOracle, CostModel
from hwnas.search.samplers import make_sampler
from hwnas.search.study import SearchSettings, TrialObjective, default_storage, finished, first_cost, open_storage
from hwnas.space import NASBNN
from hwnas.train.run import load_run

SAMPLERS = ("tpe", "nsga2", "gp", "nasbnn", "intervals")


class ProxyOracle:
    """A cheap stand-in for accuracy: grows with the subnet's OPs, with a per-arch jitter."""

    def __init__(self, costs: CostModel) -> None:
        self.costs = costs
        self.cache: dict = {}

    def __call__(self, arch) -> float:
        if arch not in self.cache:
            self.cache[arch] = self.costs.ops_m(arch) / 400 + random.Random(arch.dumps()).random() * 0.05
        return self.cache[arch]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def predictions_per_second(costs: CostModel, target: str) -> dict[str, float]:
    predictor = costs.predictors[target]
    rng = random.Random(0)
    archs = [NASBNN.sample(rng) for _ in range(10_000)]
    start = time.perf_counter()
    predictor.predict_many(archs, costs.resolution)
    batched = len(archs) / (time.perf_counter() - start)
    fresh = type(predictor)(predictor.model, predictor.calibration, predictor.meta)  # empty per-layer cache
    start = time.perf_counter()
    for arch in archs[:500]:
        fresh.predict(arch, costs.resolution)
    single = 500 / (time.perf_counter() - start)
    return {"batched_per_s": batched, "single_per_s": single}


def trials_per_second(oracle, costs: CostModel, settings: SearchSettings, trials: int) -> float:
    """Trials per second of a TPE search on a fresh SQLite study (as `hwnas search` stores it)."""
    encoding = Encoding(costs.space)
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(default_storage(Path(tmp)))
        sampler = make_sampler("tpe", 0, encoding, first_cost(costs, settings), None, trials)
        study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], sampler=sampler)
        start = time.perf_counter()
        study.optimize(TrialObjective(encoding, oracle, costs, settings), n_trials=trials)
        return trials / (time.perf_counter() - start)


def quality(oracle, costs: CostModel, settings: SearchSettings, trials: int, seeds: int) -> dict[str, list[float]]:
    """Hypervolume of every sampler's search, per seed, with one shared reference point."""
    encoding = Encoding(costs.space)
    runs: dict[str, list[list[tuple[float, float]]]] = {}
    for name in SAMPLERS:
        for seed in range(seeds):
            start = time.perf_counter()
            sampler = make_sampler(name, seed, encoding, first_cost(costs, settings), None, trials)
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
            study.optimize(TrialObjective(encoding, oracle, costs, settings), n_trials=trials)
            runs.setdefault(name, []).append([(t.values[0], t.values[1]) for t in finished(study)])
            log(f"  {name} seed {seed}: {time.perf_counter() - start:.0f} s")
    reference = (0.0, 1.1 * max(cost for points in runs.values() for run in points for _, cost in run))
    return {name: [hypervolume(run, reference) for run in points] for name, points in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("hwnas-out/supernet"), help="trained run directory")
    parser.add_argument("--target", default="local")
    parser.add_argument("--trials", type=int, default=60, help="accuracy evaluations per search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = load_run(args.run)
    settings = SearchSettings("latency", (args.target,))
    costs = CostModel.for_targets(run.space, settings.targets)
    speed = predictions_per_second(costs, args.target)
    log(f"predictions: {speed['batched_per_s']:.0f}/s batched, {speed['single_per_s']:.0f}/s one by one")
    proxy = trials_per_second(ProxyOracle(costs), costs, settings, 40)
    oracle = AccuracyOracle(run)
    real = trials_per_second(oracle, costs, settings, 20)
    log(f"trials: {proxy:.2f}/s with a proxy accuracy, {real:.2f}/s with the supernet's accuracy")
    log(f"search quality: {len(SAMPLERS)} samplers x {args.seeds} seeds x {args.trials} trials")
    hv = quality(oracle, costs, settings, args.trials, args.seeds)
    medians = {name: statistics.median(values) for name, values in hv.items()}
    data = {
        "predictions": speed,
        "trials_per_s": {"proxy_accuracy": proxy, "supernet_accuracy": real},
        "hypervolume": hv,
        "hypervolume_median": medians,
        "hypervolume_ratio_to_tpe": {name: m / medians["tpe"] for name, m in medians.items()},
        "trials": args.trials,
        "seeds": args.seeds,
    }
    if args.json:
        print(json.dumps(data))
        return
    print(f"predictions batched per s: {speed['batched_per_s']:.0f}")
    print(f"predictions one by one per s: {speed['single_per_s']:.0f}")
    print(f"trials per s, proxy accuracy: {proxy:.2f}")
    print(f"trials per s, supernet accuracy: {real:.2f}")
    print(f"{'sampler':8s} {'median HV':>10s} {'vs TPE':>7s}  per seed")
    for name in SAMPLERS:
        per_seed = " ".join(f"{v:.4f}" for v in hv[name])
        print(f"{name:8s} {medians[name]:10.4f} {medians[name] / medians['tpe']:7.3f}  {per_seed}")


if __name__ == "__main__":
    main()
