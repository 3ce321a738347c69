"""Optuna studies of a run: settings, storage, the trial objective and (multi-process) search.

A study maximises accuracy and minimises one cost per objective: the OPs, or the predicted latency
on each target (several targets give one objective each). A budget becomes a constraint set with
``trial.set_constraint`` (value <= 0 is feasible), so infeasible trials stay in the study, marked.
The settings are saved in the study's user attributes: reopening a study with other settings is
refused, and ``hwnas front`` / ``hwnas compare`` read them back.

Storage is an Optuna RDB URL: a SQLite file in the run directory by default, or PostgreSQL for
several machines. Trials send heartbeats, so the trials of a killed search are marked failed when
the search is run again, and the study continues from every finished trial (``--trials N`` is the
number of finished trials wanted, not the number to add).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from tqdm import tqdm

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.search.encoding import Encoding
from hwnas.search.objectives import AccuracyOracle, CostModel
from hwnas.search.points import Point, is_feasible
from hwnas.search.samplers import make_sampler
from hwnas.space import SearchSpace
from hwnas.train.run import Run, load_run

OBJECTIVES = ("latency", "ops")
DB_FILE = "search.db"
SETTINGS_ATTR = "hwnas"
HEARTBEAT_S = 10


@dataclass(frozen=True)
class SearchSettings:
    """What a study optimises; fixed when the study is created."""

    objective: str = "latency"
    targets: tuple[str, ...] = ("local",)
    budget_ms: float | None = None
    budget_mops: float | None = None
    resolution: int = 224

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise HwnasError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "latency" and not self.targets:
            raise HwnasError("a latency search needs at least one --target")
        if self.budget_ms is not None and not self.targets:
            raise HwnasError("--budget-ms needs a --target whose latency it bounds")

    def default_name(self) -> str:
        return self.objective + ("-" + "+".join(self.targets) if self.objective == "latency" else "")

    @property
    def cost_names(self) -> list[str]:
        """The minimised objectives after accuracy, in order."""
        return ["ops_m"] if self.objective == "ops" else [f"latency_ms:{t}" for t in self.targets]

    def costs(self, ops_m: float, latency_ms: dict[str, float]) -> list[float]:
        return [ops_m] if self.objective == "ops" else [latency_ms[t] for t in self.targets]

    def constraints(self, ops_m: float, latency_ms: dict[str, float]) -> dict[str, float]:
        """Constraint values (<= 0 is feasible): one per target under --budget-ms, one for --budget-mops."""
        out = {}
        if self.budget_ms is not None:
            out.update({f"latency_{t}": latency_ms[t] - self.budget_ms for t in self.targets})
        if self.budget_mops is not None:
            out["ops"] = ops_m - self.budget_mops
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SearchSettings:
        return cls(**{**obj, "targets": tuple(obj["targets"])})


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / DB_FILE).resolve()}"


def existing_storage(run_dir: Path, url: str | None) -> optuna.storages.RDBStorage:
    """The storage of an earlier search: ``url``, or the run's own SQLite file, which must exist."""
    if url is None and not (Path(run_dir) / DB_FILE).exists():
        raise HwnasError(f"no search in {run_dir} (no {DB_FILE}); run `hwnas search {run_dir}` first")
    return open_storage(url or default_storage(run_dir))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, with heartbeats; one clear line if it cannot be opened."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what resumption needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S)
    except Exception as exc:  # SQLAlchemy raises many kinds: bad scheme, no driver, no server
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HwnasError(f"cannot open storage {url!r}: {first}") from None


def load_study(storage: optuna.storages.BaseStorage, name: str | None) -> tuple[optuna.Study, SearchSettings]:
    """An existing hwnas study and its settings; ``name`` may be omitted when the storage holds one."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise HwnasError(f"say which study with --study (studies in the storage: {found})")
        name = names[0]
    if name not in names:
        found = ", ".join(names) if names else "none"
        raise HwnasError(f"no study {name!r} in the storage (studies: {found})")
    study = optuna.load_study(study_name=name, storage=storage)
    if SETTINGS_ATTR not in study.user_attrs:
        raise HwnasError(f"study {name!r} was not made by `hwnas search`")
    return study, SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])


def create_or_check(
    storage: optuna.storages.BaseStorage,
    name: str,
    settings: SearchSettings,
    anchors: Sequence[dict[str, int]] = (),
) -> optuna.Study:
    """The study ``name``, created with ``settings`` (and ``anchors``, parameters its first trials
    evaluate) or checked to have been created with the same settings."""
    directions = ["maximize"] + ["minimize"] * len(settings.cost_names)
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
        for params in anchors:
            study.enqueue_trial(params)
    elif SearchSettings.from_json(saved) != settings:
        raise HwnasError(
            f"study {name!r} was created with {SearchSettings.from_json(saved)}; "
            f"these settings are {settings}; pass --study NAME to start another study"
        )
    return study


def trial_point(trial: FrozenTrial) -> Point:
    """The Point a finished trial recorded."""
    attrs = trial.user_attrs
    return Point(
        number=trial.number,
        arch=Arch.from_json(attrs["arch"]),
        deployed=Arch.from_json(attrs["deployed"]),
        accuracy=float(trial.values[0]),
        ops_m=float(attrs["ops_m"]),
        latency_ms=dict(attrs["latency_ms"]),
        feasible=is_feasible(trial),
    )


def front(study: optuna.Study) -> list[Point]:
    """The feasible Pareto front, one point per architecture, by increasing first cost."""
    points = {p.arch: p for p in sorted((trial_point(t) for t in study.best_trials), key=lambda p: -p.number)}
    settings = SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
    return sorted(points.values(), key=lambda p: settings.costs(p.ops_m, p.latency_ms))


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


@dataclass
class TrialObjective:
    """The function Optuna calls: decode the trial's parameters, price the subnet, measure accuracy."""

    encoding: Encoding
    oracle: AccuracyOracle
    costs: CostModel
    settings: SearchSettings
    evaluated: int = field(default=0, init=False)

    def __call__(self, trial: Trial) -> list[float]:
        arch = self.encoding.suggest(trial)
        ops_m, latency_ms = self.costs.ops_m(arch), self.costs.latency_ms(arch)
        trial.set_user_attr("arch", arch.to_json())
        trial.set_user_attr("deployed", self.costs.deployed(arch).to_json())
        trial.set_user_attr("ops_m", ops_m)
        trial.set_user_attr("latency_ms", latency_ms)
        trial.set_user_attr("latency_margin", self.costs.margins())
        for name, value in self.settings.constraints(ops_m, self.costs.budgeted_ms(latency_ms)).items():
            trial.set_constraint(name, value)
        cached = arch in self.oracle.cache
        accuracy = self.oracle(arch)
        self.evaluated += not cached
        trial.set_user_attr("cached_accuracy", cached)
        return [accuracy, *self.settings.costs(ops_m, latency_ms)]


@dataclass(frozen=True)
class Job:
    """One worker's share of a search (picklable, for spawned worker processes)."""

    run_dir: Path
    settings: SearchSettings
    storage: str
    study: str
    sampler: str
    seed: int
    trials: int
    total: int
    threads: int | None = None


def first_cost(costs: CostModel, settings: SearchSettings) -> Callable[[Arch], float]:
    """The cost the paper's evolution bounds: OPs, or the first target's predicted latency."""
    if settings.objective == "ops":
        return costs.ops_m
    return lambda arch: costs.latency_ms(arch)[settings.targets[0]]


def work(job: Job, callbacks: list[Callable] | None = None, loaded: tuple[Run, CostModel] | None = None) -> None:
    """Run ``job.trials`` trials of the study in this process (``loaded``: the run and cost model, if
    this process has them already)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run, costs = loaded or _load(job.run_dir, job.settings)
    encoding = Encoding(run.space)
    budget = job.settings.budget_mops if job.settings.objective == "ops" else job.settings.budget_ms
    if budget is not None and job.settings.objective == "latency":  # the sampler bounds the bare prediction
        budget /= costs.margins()[job.settings.targets[0]]
    sampler = make_sampler(job.sampler, job.seed, encoding, first_cost(costs, job.settings), budget, job.total)
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage), sampler=sampler)
    oracle = AccuracyOracle(run, job.threads)
    for trial in finished(study):
        oracle.cache[Arch.from_json(trial.user_attrs["arch"])] = trial.values[0]
    objective = TrialObjective(encoding, oracle, costs, job.settings)
    study.optimize(objective, n_trials=job.trials, callbacks=callbacks or [], gc_after_trial=False)


def _load(run_dir: Path, settings: SearchSettings) -> tuple[Run, CostModel]:
    run = load_run(run_dir)
    return run, CostModel.for_targets(run.space, settings.targets, settings.resolution)


def _spawned(job: Job) -> None:
    try:
        work(job)
    except HwnasError as exc:
        print(f"hwnas: error: {exc}", file=sys.stderr)
        sys.exit(2)


@dataclass
class SearchResult:
    study: str
    storage: str
    settings: SearchSettings
    trials: int
    feasible: int
    front: list[Point]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "settings": self.settings.to_json(),
            "trials": self.trials,
            "feasible": self.feasible,
            "front": [p.to_json() for p in self.front],
            "seconds": self.seconds,
        }


def summary(study: optuna.Study, storage: str, settings: SearchSettings, seconds: float = 0.0) -> SearchResult:
    done = finished(study)
    feasible = sum(map(is_feasible, done))
    return SearchResult(study.study_name, storage, settings, len(done), feasible, front(study), seconds)


def search(
    run_dir: Path,
    settings: SearchSettings,
    trials: int,
    sampler: str = "tpe",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> SearchResult:
    """Run (or continue) a study until it has ``trials`` finished trials; K workers share the rest."""
    started = time.perf_counter()
    run, costs = _load(run_dir, settings)  # a missing run or predictor fails here, before any worker starts
    url = storage or default_storage(run_dir)
    store = open_storage(url)
    name = study_name or settings.default_name()
    study = create_or_check(store, name, settings, [] if sampler == "paper" else _anchors(run.space))
    left = trials - len(finished(study))
    if left > 0:
        shares = [left // workers + (i < left % workers) for i in range(workers)]
        jobs = [
            Job(run_dir, settings, url, name, sampler, seed + i, n, trials, 1 if workers > 1 else None)
            for i, n in enumerate(shares)
            if n
        ]
        bar = tqdm(total=trials, initial=trials - left, desc=f"search {name}", unit="trial", disable=not progress)
        if len(jobs) == 1:
            work(jobs[0], [lambda study, trial: _tick(bar, study)], (run, costs))
        else:
            _run_workers(jobs, bar, study)
        bar.close()
    return summary(study, url, settings, time.perf_counter() - started)


def _anchors(space: SearchSpace) -> list[dict[str, int]]:
    """The smallest and the largest subnet: the two the sandwich rule trains at every step, so the
    best-trained ends of the front, evaluated first by every Optuna sampler (the paper's evolution
    keeps its own random start)."""
    encoding = Encoding(space)
    return [encoding.encode(space.smallest()), encoding.encode(space.largest())]


def _tick(bar: tqdm, study: optuna.Study) -> None:
    """Progress: trials done, how many are feasible, the size of the current front."""
    done = finished(study)
    bar.n = len(done)
    feasible = sum(map(is_feasible, done))
    bar.set_postfix(feasible=feasible, front=len(study.best_trials), refresh=False)
    bar.refresh()


def _run_workers(jobs: list[Job], bar: tqdm, study: optuna.Study) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_spawned, args=(job,), daemon=False) for job in jobs]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            _tick(bar, study)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    _tick(bar, study)
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise HwnasError(f"{len(failed)} search worker(s) failed (exit codes {failed}); rerun to continue the study")
