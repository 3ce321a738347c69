"""The paper's evolutionary search as an Optuna sampler, on a synthetic accuracy (no network trained)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

import optuna
import pytest

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.predictors.ops import count_ops
from hwnas.search.encoding import Encoding
from hwnas.search.evolution import SLOT_ATTR, EvolutionConfig, PaperSampler, Slot, intervals_between
from hwnas.space import NASBNN

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = EvolutionConfig(population=8, generations=3, select=4, mutations=4, crossovers=4)
INTERVALS = intervals_between(70.0, 130.0, 2)
"""Millions of OPs; a uniformly random NAS-BNN subnet lands in each interval about a third of the time."""

LARGEST_OPS = count_ops(NASBNN.largest()).ops / 1e6


def ops_m(arch: Arch) -> float:
    return count_ops(arch).ops / 1e6


def accuracy(arch: Arch) -> float:
    """Deterministic stand-in: grows with OPs and with the share of 5x5 kernels, plus a per-arch jitter."""
    layers = [layer for _, _, layer in arch.layers()]
    k5 = sum(layer.k == 5 for layer in layers) / len(layers)
    jitter = int(hashlib.sha256(arch.dumps().encode()).hexdigest()[:8], 16) / 2**32
    return 0.4 * ops_m(arch) / LARGEST_OPS + 0.4 * k5 + 0.2 * jitter


def tiny_ops_k(arch: Arch) -> float:
    """Thousands of OPs at 16x16 inputs: the cost for the tiny space (about 9k to 21k)."""
    return count_ops(arch, resolution=16).ops / 1e3


def objective(encoding: Encoding, cost: Callable[[Arch], float]) -> Callable[[optuna.Trial], tuple[float, float]]:
    def run(trial: optuna.Trial) -> tuple[float, float]:
        arch = encoding.suggest(trial)
        trial.set_user_attr("arch", arch.dumps())
        return accuracy(arch), cost(arch)

    return run


def search(
    encoding: Encoding,
    config: EvolutionConfig,
    trials: int,
    seed: int = 0,
    cost: Callable[[Arch], float] = ops_m,
    intervals: Sequence[tuple[float, float]] = INTERVALS,
    **study: Any,
) -> optuna.Study:
    sampler = PaperSampler(encoding, cost, intervals, config, seed=seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler, **study)
    study.optimize(objective(encoding, cost), n_trials=trials)
    return study


@pytest.fixture(scope="module")
def nasbnn_study() -> optuna.Study:
    return search(Encoding(NASBNN), SMALL, 2 * SMALL.per_interval)


def test_default_config_is_the_papers() -> None:
    config = EvolutionConfig()
    assert (config.population, config.generations, config.select) == (512, 20, 128)
    assert (config.mutations, config.crossovers, config.mutation_prob) == (128, 128, 0.2)
    assert config.per_interval == 512 + 19 * 256


def test_scaled_keeps_a_large_budget_and_shrinks_a_small_one() -> None:
    config = EvolutionConfig()
    assert config.scaled(4 * config.per_interval, 4) == config
    small = config.scaled(1000, 2)
    assert small.generations == 20 and 2 * small.per_interval <= 1000
    assert small.population < 512 and small.select < 128 and small.mutations == small.crossovers < 128
    tiny = config.scaled(10, 2)
    assert (tiny.population, tiny.select, tiny.mutations, tiny.crossovers) == (4, 2, 2, 2)
    assert SMALL.scaled(10, 2).crossovers == 2  # a value below the floor stays as it is
    sixty = config.scaled(60, 4)  # the floors alone would take 4 x 80 trials: fewer generations
    assert sixty.generations == 3 and 4 * sixty.per_interval <= 60


def test_slot_follows_the_trial_number() -> None:
    assert SMALL.per_interval == 24
    assert SMALL.slot(7, 2) == Slot(0, 0, "random", 0)
    assert SMALL.slot(8, 2) == Slot(0, 1, "mutation", 8)
    assert SMALL.slot(13, 2) == Slot(0, 1, "crossover", 8)
    assert SMALL.slot(23, 2) == Slot(0, 2, "crossover", 16)
    assert SMALL.slot(24, 2) == Slot(1, 0, "random", 24)
    assert SMALL.slot(41, 2) == Slot(1, 2, "mutation", 40)
    # past the schedule: further generations, one interval after another
    assert SMALL.slot(48, 2) == Slot(0, 3, "mutation", 48)
    assert SMALL.slot(57, 2) == Slot(1, 3, "mutation", 56)
    assert SMALL.slot(68, 2) == Slot(0, 4, "crossover", 64)


def test_intervals_between() -> None:
    assert intervals_between(10.0, 40.0, 3) == [(10.0, 20.0), (20.0, 30.0), (30.0, 40.0)]
    with pytest.raises(HwnasError):
        intervals_between(40.0, 10.0, 2)


def test_every_trial_is_a_valid_arch_and_its_params_are_canonical(nasbnn_study: optuna.Study) -> None:
    encoding = Encoding(NASBNN)
    trials = nasbnn_study.trials
    assert len(trials) == 48 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        arch = NASBNN.validate(encoding.decode(t.params))
        assert encoding.encode(arch) == t.params
        assert Arch.from_json(json.loads(t.user_attrs["arch"])) == arch
    assert len({tuple(t.params.values()) for t in trials}) == len(trials)  # no arch evaluated twice


def test_children_are_made_by_the_scheduled_operator_within_their_interval(nasbnn_study: optuna.Study) -> None:
    for t in nasbnn_study.trials:
        slot, info = SMALL.slot(t.number, 2), t.system_attrs[SLOT_ATTR]
        assert (info["interval"], info["generation"], info["operator"]) == (
            slot.interval,
            slot.generation,
            slot.operator,
        )
        low, high = INTERVALS[slot.interval]
        assert info["fits"] and low <= t.values[1] <= high and info["cost"] == t.values[1]


def test_evolution_improves_on_the_random_population(nasbnn_study: optuna.Study) -> None:
    for interval in range(2):
        by_generation = {}
        for t in nasbnn_study.trials:
            slot = SMALL.slot(t.number, 2)
            if slot.interval == interval:
                by_generation.setdefault(slot.generation, []).append(t.values[0])
        population, last = by_generation[0], by_generation[SMALL.generations - 1]
        assert mean(last) > mean(population)
        assert max(v for g in by_generation.values() for v in g) >= max(population)


def test_resumed_search_equals_an_uninterrupted_one(tiny_space, tmp_path) -> None:
    """A killed search resumed by a fresh sampler on the same SQLite storage, against one run in memory."""
    encoding, storage = Encoding(tiny_space), f"sqlite:///{tmp_path / 'study.db'}"
    tiny = {"cost": tiny_ops_k, "intervals": intervals_between(12.0, 20.0, 2)}
    whole = search(encoding, SMALL, 48, **tiny)
    search(encoding, SMALL, 29, storage=storage, study_name="s", **tiny)  # stops inside interval 1's population
    resumed = search(encoding, SMALL, 19, storage=storage, study_name="s", load_if_exists=True, **tiny)
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert {t.system_attrs[SLOT_ATTR]["operator"] for t in resumed.trials} == {"random", "mutation", "crossover"}
    with pytest.raises(HwnasError, match="same configuration"):
        search(encoding, EvolutionConfig(population=6), 1, storage=storage, study_name="s", load_if_exists=True, **tiny)


def test_another_seed_searches_differently(nasbnn_study: optuna.Study) -> None:
    other = search(Encoding(NASBNN), SMALL, 10, seed=1)
    assert [t.params for t in other.trials] != [t.params for t in nasbnn_study.trials[:10]]


def test_mutation_and_crossover_keep_nd_where_widths_overlap(tiny_space) -> None:
    """In the tiny space stage widths overlap across stages and groups may not divide: children need repair."""
    encoding = Encoding(tiny_space)
    config = EvolutionConfig(population=6, generations=4, select=3, mutations=3, crossovers=3, mutation_prob=0.5)
    study = search(encoding, config, config.per_interval, seed=3, cost=tiny_ops_k, intervals=[(0.0, float("inf"))])
    operators = [t.system_attrs[SLOT_ATTR]["operator"] for t in study.trials]
    assert operators.count("mutation") == 9 and operators.count("crossover") == 9
    for t in study.trials:
        assert encoding.encode(tiny_space.validate(encoding.decode(t.params))) == t.params
    assert len({tuple(t.params.values()) for t in study.trials}) == len(study.trials)


def test_workers_sharing_a_study_make_valid_subnets() -> None:
    """Two threads on one study: a child whose parents are still running is drawn at random, never invalid."""
    encoding = Encoding(NASBNN)
    sampler = PaperSampler(encoding, ops_m, INTERVALS, SMALL, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective(encoding, ops_m), n_trials=SMALL.per_interval, n_jobs=2)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        NASBNN.validate(encoding.decode(t.params))


def test_children_fall_back_to_random_without_feasible_parents() -> None:
    encoding = Encoding(NASBNN)
    config = EvolutionConfig(population=4, generations=2, select=2, mutations=2, crossovers=2)

    def infeasible(trial: optuna.Trial) -> tuple[float, float]:
        arch = encoding.suggest(trial)
        trial.set_constraint("budget", 1.0)
        return accuracy(arch), ops_m(arch)

    sampler = PaperSampler(encoding, ops_m, INTERVALS[:1], config, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(infeasible, n_trials=config.per_interval)
    assert [t.system_attrs[SLOT_ATTR]["operator"] for t in study.trials] == ["random"] * 8


def test_a_parameter_outside_the_encoding_is_sampled_reproducibly() -> None:
    encoding = Encoding(NASBNN)

    def run(seed: int) -> list[float]:
        study = optuna.create_study(sampler=PaperSampler(encoding, ops_m, INTERVALS, SMALL, seed=seed))
        study.optimize(lambda t: accuracy(encoding.suggest(t)) + 0 * t.suggest_float("x", 0.0, 1.0), n_trials=3)
        return [t.params["x"] for t in study.trials]

    assert run(5) == run(5) != run(6)


def test_nasbnn_sampler_follows_the_authors_search() -> None:
    """Smallest and largest first, then random subnets in range; children come from the bucket
    front, stay in range, are new and keep ND; the schedule is recorded per trial."""
    from hwnas.search.evolution import NasbnnSampler

    encoding = Encoding(NASBNN)
    low, high = ops_m(NASBNN.smallest()), 150.0
    config = EvolutionConfig(population=8, generations=3, select=2, mutations=4, crossovers=4)
    sampler = NasbnnSampler(encoding, ops_m, low, high, config, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective(encoding, ops_m), n_trials=config.per_interval)
    trials = study.get_trials()
    archs = [Arch.from_json(json.loads(t.user_attrs["arch"])) for t in trials]
    assert archs[0] == NASBNN.smallest() and archs[1] == NASBNN.largest()
    slots = [t.system_attrs[SLOT_ATTR] for t in trials]
    assert [s["operator"] for s in slots[8:]] == (["mutation"] * 4 + ["crossover"] * 4) * 2
    assert all(s["fits"] and low <= s["cost"] <= high for s in slots[2:])
    assert len(set(archs)) == len(archs)
    for arch in archs:
        NASBNN.validate(arch)
    # parents of generation 2 are exactly the bucket front of generations 0 and 1
    front: dict[int, optuna.trial.FrozenTrial] = {}
    for t in trials[:16]:
        if t.system_attrs[SLOT_ATTR]["fits"] or t.number < 2:
            bucket = round(t.system_attrs[SLOT_ATTR]["cost"] / sampler.step)
            if bucket not in front or t.values[0] > front[bucket].values[0]:
                front[bucket] = t
    parents = sampler._parents(study, trials, config.slot(16, 1))
    assert sorted(map(sampler._key, parents)) == sorted(sampler._key(t.params) for t in front.values())
