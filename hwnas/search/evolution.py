"""The NAS-BNN paper's evolutionary search (SPOS/OFA style), as an Optuna sampler.

The paper's code searches every OPs interval on its own: 512 random subnets inside the interval,
then 19 generations, each keeping the 128 most accurate subnets found so far and evaluating 128
mutations (every gene redrawn with probability 0.2) and 128 crossovers (every gene from one of two
parents) of them. A candidate outside the interval, or already evaluated, is rejected and redrawn.
The union of the intervals' results forms the front.

Being an Optuna sampler, it shares storage, resume, worker processes and the objective function
with Optuna's own samplers. What differs from the paper's code:

* Genes are the :class:`~hwnas.search.encoding.Encoding` parameters. A child is decoded, which
  repairs the Non-Decreasing constraint and group divisibility, and re-encoded, so a trial's
  parameters are exactly the subnet it evaluates.
* Redraws are bounded (``max_tries``); when no candidate fits, the one nearest the interval is
  taken, preferring one not evaluated before.
* The sampler keeps no state between calls. A trial's place in the schedule follows from its
  number (:meth:`EvolutionConfig.slot`), its parents are read from the study (the best feasible
  finished trials of its interval numbered before its generation), and its random numbers are
  seeded by (seed, trial number). A killed search therefore resumes where it stopped, and several
  processes can share one storage; a child whose parents are not finished yet is drawn at random.
  The schedule is stored in the study, and resuming with a different one is refused.
* Trials past the schedule run further generations, one interval after another.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hwnas.arch import Arch, Layer
from hwnas.errors import ArchError, HwnasError
from hwnas.search.encoding import Encoding
from hwnas.search.points import is_feasible

Operator = Literal["random", "mutation", "crossover"]

SLOT_ATTR = "evolution"
"""Trial system attribute: interval, generation, the operator that made it and whether it fits."""

SCHEDULE_ATTR = "evolution:schedule"
"""Study system attribute: the configuration and intervals the trial numbers refer to."""

_PARENTS_NEEDED: dict[Operator, int] = {"random": 0, "mutation": 1, "crossover": 2}


@dataclass(frozen=True)
class Slot:
    """A trial's place in the schedule; parents come from trials numbered below ``start``."""

    interval: int
    generation: int
    operator: Operator
    start: int


@dataclass(frozen=True)
class EvolutionConfig:
    """The paper's evolution per interval; ``max_tries`` bounds the redraws of one candidate."""

    population: int = 512
    generations: int = 20
    select: int = 128
    mutations: int = 128
    crossovers: int = 128
    mutation_prob: float = 0.2
    max_tries: int = 100

    def __post_init__(self) -> None:
        if min(self.population, self.generations, self.select, self.max_tries) < 1:
            raise HwnasError("evolution: population, generations, select and max_tries must be at least 1")
        if min(self.mutations, self.crossovers) < 0 or self.mutations + self.crossovers < 1:
            raise HwnasError("evolution: mutations and crossovers must be >= 0, and not both 0")
        if self.crossovers and self.select < 2:
            raise HwnasError("evolution: crossovers need select >= 2")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise HwnasError(f"evolution: mutation_prob {self.mutation_prob} outside [0, 1]")

    @property
    def per_interval(self) -> int:
        """Evaluations one interval's schedule takes."""
        return self.population + (self.generations - 1) * (self.mutations + self.crossovers)

    def scaled(self, trials: int, intervals: int) -> EvolutionConfig:
        """This schedule shrunk to fit ``trials`` evaluations over ``intervals`` intervals.

        Population, select, mutations and crossovers shrink in proportion (to at least 4, 2, 2, 2,
        or their own value if smaller). Generations stay unless even that would overrun the budget:
        then as many fit as the budget allows (at least 2), so that every interval is searched. A
        budget that covers the full schedule keeps it. Rounding down leaves a few trials over,
        which run further generations.
        """
        if trials < 1 or intervals < 1:
            raise HwnasError("evolution: trials and intervals must be at least 1")
        factor = trials / (intervals * self.per_interval)
        if factor >= 1.0:
            return self

        def shrink(value: int, floor: int) -> int:
            return max(min(value, floor), int(value * factor))

        small = replace(
            self,
            population=shrink(self.population, 4),
            select=shrink(self.select, 2),
            mutations=shrink(self.mutations, 2),
            crossovers=shrink(self.crossovers, 2),
        )
        fitting = (trials // intervals - small.population) // (small.mutations + small.crossovers) + 1
        return replace(small, generations=max(2, min(self.generations, fitting)))

    def slot(self, number: int, intervals: int) -> Slot:
        """Where trial ``number`` stands when ``intervals`` intervals are searched one after another."""
        per, size = self.per_interval, self.mutations + self.crossovers
        if number < intervals * per:
            interval, j = divmod(number, per)
            if j < self.population:
                return Slot(interval, 0, "random", interval * per)
            generation, r = divmod(j - self.population, size)
            generation += 1
        else:
            block, r = divmod(number - intervals * per, size)
            interval, generation = block % intervals, self.generations + block // intervals
        return Slot(interval, generation, "mutation" if r < self.mutations else "crossover", number - r)


def intervals_between(low: float, high: float, n: int) -> list[tuple[float, float]]:
    """``[low, high]`` split into ``n`` equal, adjoining intervals."""
    if n < 1 or not low <= high:
        raise HwnasError(f"intervals: need n >= 1 and low <= high, got n={n}, [{low}, {high}]")
    step = (high - low) / n
    return [(low + i * step, high if i == n - 1 else low + (i + 1) * step) for i in range(n)]


class PaperSampler(BaseSampler):
    """Interval evolution (``--sampler intervals``) over ``encoding``'s parameters within cost ``intervals``.

    ``cost(arch)`` is the search's cost of a subnet (OPs in millions, or predicted latency in ms);
    the intervals are searched one after another. Trials are ranked by ``values[0]`` (accuracy)
    in the study's first direction; a trial is feasible when all its constraints are <= 0.
    """

    def __init__(
        self,
        encoding: Encoding,
        cost: Callable[[Arch], float],
        intervals: Sequence[tuple[float, float]],
        config: EvolutionConfig = EvolutionConfig(),
        seed: int | None = None,
    ) -> None:
        if not intervals or any(not low <= high for low, high in intervals):
            raise HwnasError(f"evolution: intervals must be non-empty [low, high] pairs, got {list(intervals)}")
        self.encoding = encoding
        self.cost = cost
        self.intervals = [(float(low), float(high)) for low, high in intervals]
        self.config = config
        self.seed = random.SystemRandom().randrange(2**32) if seed is None else seed
        self._search_space = {name: IntDistribution(0, n - 1) for name, n in encoding.choices.items()}

    # ----------------------------------------------------------------- Optuna interface
    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Record the schedule in the study, or refuse one that differs from the recorded."""
        schedule = {"config": asdict(self.config), "intervals": [list(pair) for pair in self.intervals]}
        stored = study._storage.get_study_system_attrs(study._study_id).get(SCHEDULE_ATTR)
        if stored is None:
            study._storage.set_study_system_attr(study._study_id, SCHEDULE_ATTR, schedule)
        elif stored != schedule:
            raise HwnasError(
                f"evolution: study {study.study_name!r} was searched with schedule {stored}, "
                f"not {schedule}; resume it with the same configuration and intervals"
            )

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._search_space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        slot = self.config.slot(trial.number, len(self.intervals))
        low, high = self.intervals[slot.interval]
        trials = study.get_trials(deepcopy=False)
        seen = {self._key(t.params) for t in trials if t.params and t.number != trial.number}
        parents = self._parents(study, trials, slot)
        operator = slot.operator if len(parents) >= _PARENTS_NEEDED[slot.operator] else "random"
        rng = random.Random(f"{self.seed}:{trial.number}")
        params, cost, fits = self._draw(lambda: self._child(operator, parents, rng, trial.number), low, high, seen)
        info = {
            "interval": slot.interval,
            "generation": slot.generation,
            "operator": operator,
            "cost": cost,
            "fits": fits,
        }
        study._storage.set_trial_system_attr(trial._trial_id, SLOT_ATTR, info)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A parameter outside the encoding: uniformly random, seeded by (seed, trial, name)."""
        seed = random.Random(f"{self.seed}:{trial.number}:{param_name}").getrandbits(32)
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)

    # ----------------------------------------------------------------- evolution
    def _key(self, params: Mapping[str, Any]) -> tuple[int, ...]:
        return tuple(int(params.get(name, 0)) for name in self._search_space)

    def _parents(self, study: Study, trials: list[FrozenTrial], slot: Slot) -> list[dict[str, int]]:
        """Parameters of the ``select`` best feasible finished trials of the slot's interval before it."""
        if slot.operator == "random":
            return []
        sign = 1.0 if study.directions[0] == StudyDirection.MAXIMIZE else -1.0
        intervals = len(self.intervals)
        pool = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.number < slot.start
            and self.config.slot(t.number, intervals).interval == slot.interval
            and is_feasible(t)
        ]
        pool.sort(key=lambda t: (-sign * t.values[0], t.number))
        return [dict(zip(self._search_space, self._key(t.params), strict=True)) for t in pool[: self.config.select]]

    def _child(self, operator: Operator, parents: list[dict[str, int]], rng: random.Random, number: int) -> Arch:
        """One candidate made by ``operator`` from ``parents`` (parameter dicts)."""
        if operator == "mutation":
            return self.encoding.decode(self._mutate(rng.choice(parents), rng))
        if operator == "crossover":
            first, second = rng.sample(parents, 2)
            return self.encoding.decode({k: rng.choice((first[k], second[k])) for k in self._search_space})
        return self.encoding.space.sample(rng)

    def _mutate(self, parent: dict[str, int], rng: random.Random) -> dict[str, int]:
        choices = self.encoding.choices
        return {
            k: rng.randrange(choices[k]) if rng.random() < self.config.mutation_prob else v for k, v in parent.items()
        }

    def _draw(
        self, make: Callable[[], Arch], low: float, high: float, seen: set[tuple[int, ...]]
    ) -> tuple[dict[str, int], float, bool]:
        """A new candidate within [low, high]; else, after max_tries, the best miss: new, then nearest.

        Returns its canonical parameters, its cost and whether it is new and within the interval.
        """
        best: tuple[tuple[bool, float], dict[str, int], float] | None = None
        for _ in range(self.config.max_tries):
            arch = make()
            params = self.encoding.encode(arch)
            cost = float(self.cost(arch))
            rank = (self._key(params) in seen, max(low - cost, cost - high, 0.0))
            if rank == (False, 0.0):
                return params, cost, True
            if best is None or rank < best[0]:
                best = (rank, params, cost)
        assert best is not None  # max_tries >= 1
        return best[1], best[2], False


NASBNN_SCHEDULE = EvolutionConfig(population=512, generations=21, select=2, mutations=128, crossovers=128)
"""The authors' search.py defaults: 512 random, then 20 epochs of 128 mutations and 128 crossovers
(``select`` is unused: parents come from the bucket front)."""
NASBNN_BUCKETS = 80
"""Their README searches OPs 20..180 in buckets of 2: 80 buckets, kept when the range is scaled."""


class NasbnnSampler(PaperSampler):
    """The NAS-BNN authors' evolutionary search as their ``search.py`` writes it (``--sampler nasbnn``).

    One population over [low, high]: the smallest and the largest subnet, then random subnets
    within the range; every generation draws its parents uniformly from the *bucket front*, the
    most accurate subnet found so far in each cost bucket ``round(cost / step) * step``. Mutation:
    each stage redraws its depth with probability ``mutation_prob``, then each active layer
    redraws width (at least the previous layer's), kernel and groups together with that
    probability. Crossover: each stage takes its depth from either parent, each layer each of
    width, kernel and groups from either; a child that breaks the Non-Decreasing rule is
    rejected, as theirs is. Children outside the range or seen before are redrawn. Where hwnas
    differs: a layer switched on by a deeper depth copies the stage's last layer (their
    candidate rows keep hidden values), a mutant breaking ND is rejected too (their model ran it),
    and redraws are bounded as in :class:`PaperSampler`. The schedule shrinks with ``trials``
    (:meth:`EvolutionConfig.scaled`).
    """

    def __init__(
        self,
        encoding: Encoding,
        cost: Callable[[Arch], float],
        low: float,
        high: float,
        config: EvolutionConfig = NASBNN_SCHEDULE,
        step: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(encoding, cost, [(low, high)], config, seed)
        self.step = step if step is not None else max((high - low) / NASBNN_BUCKETS, 1e-12)

    def _parents(self, study: Study, trials: list[FrozenTrial], slot: Slot) -> list[dict[str, int]]:
        """The bucket front of the feasible finished trials numbered before the slot's generation."""
        if slot.operator == "random":
            return []
        sign = 1.0 if study.directions[0] == StudyDirection.MAXIMIZE else -1.0
        front: dict[int, FrozenTrial] = {}
        for t in trials:
            if t.state != TrialState.COMPLETE or t.number >= slot.start or not is_feasible(t):
                continue
            cost = (t.system_attrs.get(SLOT_ATTR) or {}).get("cost")
            if cost is None:
                cost = float(self.cost(self.encoding.decode(t.params)))
            bucket = round(cost / self.step)
            best = front.get(bucket)
            if best is None or sign * t.values[0] > sign * best.values[0]:
                front[bucket] = t
        return [dict(zip(self._search_space, self._key(t.params), strict=True)) for t in front.values()]

    def _child(self, operator: Operator, parents: list[dict[str, int]], rng: random.Random, number: int) -> Arch:
        space = self.encoding.space
        if operator == "random":
            return space.smallest() if number == 0 else space.largest() if number == 1 else space.sample(rng)
        if operator == "mutation":
            child = self._mutate_arch(self.encoding.decode(rng.choice(parents)), rng)
        else:
            first, second = (self.encoding.decode(p) for p in (rng.choice(parents), rng.choice(parents)))
            child = self._cross(first, second, rng)
        try:
            return space.validate(child)
        except ArchError:
            raise _Rejected from None

    def _draw(
        self, make: Callable[[], Arch], low: float, high: float, seen: set[tuple[int, ...]]
    ) -> tuple[dict[str, int], float, bool]:
        def retry() -> Arch:
            for _ in range(self.config.max_tries):
                try:
                    return make()
                except _Rejected:
                    continue
            return self.encoding.space.sample(random.Random(len(seen)))

        return super()._draw(retry, low, high, seen)

    def _mutate_arch(self, arch: Arch, rng: random.Random) -> Arch:
        p, stages, space = self.config.mutation_prob, [], self.encoding.space
        stem = rng.choice(space.stem_widths) if rng.random() < p else arch.stem
        for st, layers in zip(self.encoding.space.stages, arch.stages, strict=True):
            layers = list(layers)
            if rng.random() < p:
                depth = rng.choice(st.depths)
                layers = (layers + [layers[-1]] * depth)[:depth]
            stages.append(layers)
        prev, out = stem, []
        for st, layers in zip(self.encoding.space.stages, stages, strict=True):
            new = []
            for layer in layers:
                if rng.random() < p:
                    widths = [c for c in st.widths if c >= prev] or list(st.widths)
                    layer = Layer(rng.choice(widths), rng.choice(st.kernels), rng.choice(st.groups))
                new.append(layer)
                prev = layer.c
            out.append(tuple(new))
        return replace(arch, stem=stem, stages=tuple(out))

    def _cross(self, first: Arch, second: Arch, rng: random.Random) -> Arch:
        stages = []
        for a, b in zip(first.stages, second.stages, strict=True):
            depth = len(rng.choice((a, b)))
            layers = []
            for i in range(depth):
                x, y = a[min(i, len(a) - 1)], b[min(i, len(b) - 1)]
                layers.append(Layer(rng.choice((x.c, y.c)), rng.choice((x.k, y.k)), rng.choice((x.g, y.g))))
            stages.append(tuple(layers))
        return replace(first, stem=rng.choice((first.stem, second.stem)), stages=tuple(stages))


class _Rejected(Exception):
    """A child the authors' rules reject (it breaks the space); the caller draws again."""
