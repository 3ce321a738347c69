"""Optuna studies of a run: settings, storage, the trial objective and (multi-process) search.

A study maximises accuracy and minimises one cost per objective: the OPs, or the predicted latency
on each target (several targets give one objective each). A budget becomes a constraint set with
``trial.set_constraint`` (value <= 0 is feasible), so infeasible trials stay in the study, marked.
The settings are saved in the study's user attributes: reopening a study with other settings is
refused, and ``hwnas front`` / ``hwnas compare`` read them back.

Storage is an Optuna RDB URL: a SQLite file in the run directory by default, or PostgreSQL for
several machines. ``--trials N`` is the number of finished trials the study should have, counted in
the storage: each worker claims its next trial under a lock shared by all workers (complete plus
running trials stay within N), so workers started together or apart end with exactly N. Trials
send heartbeats; the trial of a killed worker is failed once its heartbeat lapses, and an anchor
(smallest or largest subnet) failed so is enqueued again. A study records the checkpoint that
scored it and is refused to other weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, Trial, TrialState
from tqdm import tqdm

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.search.encoding import Encoding
from hwnas.search.objectives import AccuracyOracle, CostModel
from hwnas.search.points import Point, is_feasible
from hwnas.search.samplers import EVOLUTION, make_sampler
from hwnas.search.storage import StorageLock, heartbeats, open_storage, redact, revive_silent_trials, storage_error
from hwnas.space import SearchSpace
from hwnas.train.checkpoint import FILENAME as CHECKPOINT
from hwnas.train.run import Run, load_run

_log = logging.getLogger(__name__)

OBJECTIVES = ("latency", "ops")
DB_FILE = "search.db"
SETTINGS_ATTR = "hwnas"
WEIGHTS_ATTR = "hwnas_weights"
WORKERS_ATTR = "hwnas_workers"
ANCHOR_ATTR = "anchor"
CLAIMED = (TrialState.COMPLETE, TrialState.RUNNING)
POLL_S = 1.0
"""How often a worker waiting for other workers' running trials looks again."""
REPEAT_CAP = 3
"""A study also stops after this many times its ``trials`` finished trials, short of ``trials``
distinct subnets: a small space, or a sampler that keeps proposing what it has seen."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:=@-]*")


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


def check_study_name(name: str) -> str:
    """``name`` if it is a plain study name: it becomes part of file names (``front-NAME.png``), so
    no path separator, no leading dot, at most 100 characters."""
    if not _NAME.fullmatch(name) or len(name) > 100:
        raise HwnasError(
            f"bad study name {name!r}: use letters, digits and _ . + : = @ - (no path separator, no leading dot)"
        )
    return name


def load_study(storage: optuna.storages.BaseStorage, name: str | None) -> tuple[optuna.Study, SearchSettings]:
    """An existing hwnas study and its settings; ``name`` may be omitted when the storage holds one."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise HwnasError(f"say which study with --study (studies in the storage: {found})")
        name = names[0]
    check_study_name(name)
    if name not in names:
        found = ", ".join(names) if names else "none"
        raise HwnasError(f"no study {name!r} in the storage (studies: {found})")
    study = optuna.load_study(study_name=name, storage=storage)
    if SETTINGS_ATTR not in study.user_attrs:
        raise HwnasError(f"study {name!r} was not made by `hwnas search`")
    return study, SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])


def weights_identity(run: Run) -> dict[str, Any]:
    """What a study records of the supernet that scores it: the checkpoint's SHA-256 and epoch."""
    digest = hashlib.sha256()
    with open(run.run_dir / CHECKPOINT, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"checkpoint_sha256": digest.hexdigest(), "epochs": run.epochs_done}


def check_weights(study: optuna.Study, weights: dict[str, Any]) -> None:
    """Refuse a study scored by other weights than ``weights`` (its accuracies would be stale)."""
    saved = study.user_attrs.get(WEIGHTS_ATTR)
    if saved is None or saved.get("checkpoint_sha256") != weights["checkpoint_sha256"]:
        was = (
            "by weights it did not record"
            if saved is None
            else (f"by checkpoint {saved['checkpoint_sha256'][:12]} (epoch {saved['epochs']})")
        )
        raise HwnasError(
            f"study {study.study_name!r} was scored {was}, this run's checkpoint is "
            f"{weights['checkpoint_sha256'][:12]} (epoch {weights['epochs']}); "
            "pass --study NEWNAME to start a new study with these weights"
        )


def create_or_check(
    storage: optuna.storages.BaseStorage,
    name: str,
    settings: SearchSettings,
    anchors: Mapping[str, dict[str, int]] | None = None,
    weights: dict[str, Any] | None = None,
) -> optuna.Study:
    """The study ``name``, created with ``settings``, ``weights`` (the checkpoint's identity) and
    ``anchors`` (parameters its first trials evaluate, by name), or checked to have been created
    with the same settings and weights. Run it under the study's :class:`StorageLock`."""
    directions = ["maximize"] + ["minimize"] * len(settings.cost_names)
    name = check_study_name(name)
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        with warnings.catch_warnings():  # metric names are experimental; dashboards and plots show them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy", *settings.cost_names])
        if weights is not None:
            study.set_user_attr(WEIGHTS_ATTR, weights)
        for anchor, params in (anchors or {}).items():
            study.enqueue_trial(params, user_attrs={ANCHOR_ATTR: anchor})
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())  # last: a study with settings is complete
    elif SearchSettings.from_json(saved) != settings:
        raise HwnasError(
            f"study {name!r} was created with {SearchSettings.from_json(saved)}; "
            f"these settings are {settings}; pass --study NAME to start another study"
        )
    elif weights is not None:
        check_weights(study, weights)
    return study


def requeue_anchor(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: an anchor trial whose worker died is enqueued again (else it is lost)."""
    anchor = trial.user_attrs.get(ANCHOR_ATTR)
    if anchor is not None:
        _log.info("anchor %s (trial %d) was failed as stale; enqueued again", anchor, trial.number)
        study.enqueue_trial(trial.system_attrs.get("fixed_params") or trial.params, user_attrs={ANCHOR_ATTR: anchor})


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


def distinct(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The first finished trial of each subnet. Samplers propose a subnet they have seen again (TPE
    did in 25-31 % of the pipeline's 100 trials once its model had settled): a repeat costs no
    evaluation and adds no point, so a study's trials are counted as distinct subnets."""
    seen: set[str] = set()
    first = []
    for trial in sorted(trials, key=lambda t: t.number):
        key = json.dumps(trial.user_attrs.get("arch"), sort_keys=True)
        if key not in seen:
            seen.add(key)
            first.append(trial)
    return first


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
    """What one worker process needs to work on a study (picklable, for spawned workers)."""

    run_dir: Path
    settings: SearchSettings
    storage: str
    study: str
    sampler: str
    seed: int
    trials: int
    threads: int | None = None


def first_cost(costs: CostModel, settings: SearchSettings) -> Callable[[Arch], float]:
    """The cost the paper's evolution bounds: OPs, or the first target's predicted latency."""
    if settings.objective == "ops":
        return costs.ops_m
    return lambda arch: costs.latency_ms(arch)[settings.targets[0]]


def work(job: Job, callbacks: list[Callable] | None = None, loaded: tuple[Run, CostModel] | None = None) -> None:
    """Claim and run trials of the study in this process until it has ``job.trials`` finished ones
    (``loaded``: the run and cost model, if this process has them already)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run, costs = loaded or _load(job.run_dir, job.settings)
    store = open_storage(job.storage, on_stale=requeue_anchor)
    lock = StorageLock(job.storage, f"study:{job.study}")
    try:
        with lock:  # a worker number: workers on one study sample with different seeds
            study = optuna.load_study(study_name=job.study, storage=store)
            check_weights(study, weights_identity(run))
            index = study.user_attrs.get(WORKERS_ATTR, 0)
            study.set_user_attr(WORKERS_ATTR, index + 1)
        encoding = Encoding(run.space)
        budget = job.settings.budget_mops if job.settings.objective == "ops" else job.settings.budget_ms
        if budget is not None and job.settings.objective == "latency":  # the sampler bounds the bare prediction
            budget /= costs.margins()[job.settings.targets[0]]
        cost = first_cost(costs, job.settings)
        study.sampler = make_sampler(job.sampler, job.seed + index, encoding, cost, budget, job.trials)
        oracle = AccuracyOracle(run, job.threads)
        for trial in finished(study):
            oracle.cache[Arch.from_json(trial.user_attrs["arch"])] = trial.values[0]
        objective = TrialObjective(encoding, oracle, costs, job.settings)
        while (trial := claim(study, job.trials, lock)) is not None:
            frozen = _evaluate(study, store, trial, objective)
            for callback in callbacks or []:
                callback(study, frozen)
    except sqlalchemy.exc.SQLAlchemyError as exc:  # the server went away mid-search, say
        raise storage_error(job.storage, exc, "search lost its storage") from None
    finally:
        lock.close()


def claim(study: optuna.Study, trials: int, lock: StorageLock) -> Trial | None:
    """The next trial for this worker, or None once the study has ``trials`` distinct subnets
    (:func:`distinct`), or ``REPEAT_CAP`` times that many finished trials.

    Under the lock: fail stale trials (re-enqueueing anchors), count the distinct subnets of the
    finished trials and the running trials in the storage, and start a trial only while together
    they are fewer than ``trials``; otherwise wait for the running ones (a dead worker's trial goes
    stale and its slot is freed).
    """
    while True:
        with lock, warnings.catch_warnings():
            # fail_stale_trials is marked experimental, and ask() warns that heartbeats are meant
            # for optimize(): this loop sends them itself (see heartbeats)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            revive_silent_trials(study)  # a trial killed before its first heartbeat goes stale too
            optuna.storages.fail_stale_trials(study)
            claimed = study.get_trials(deepcopy=False, states=CLAIMED)
            done = [t for t in claimed if t.state == TrialState.COMPLETE]
            subnets, running = len(distinct(done)), len(claimed) - len(done)
            if subnets >= trials or len(done) >= REPEAT_CAP * trials:
                return None
            if subnets + running < trials and len(claimed) < REPEAT_CAP * trials:
                trial = study.ask()
                study._storage.record_heartbeat(trial._trial_id)  # stale-checked from its first moment
                return trial
        time.sleep(POLL_S)


def _evaluate(
    study: optuna.Study, store: optuna.storages.RDBStorage, trial: Trial, objective: TrialObjective
) -> FrozenTrial:
    """Run ``objective`` on ``trial`` with heartbeats and tell the study how it ended."""
    try:
        with heartbeats(store, trial._trial_id):
            values = objective(trial)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    try:
        return study.tell(trial, values)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile (a lost connection)
        _log.warning("trial %d was failed as stale while it ran; its result is dropped", trial.number)
        return study._storage.get_trial(trial._trial_id)


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
    repeats: int = 0  # finished trials that proposed a subnet already evaluated (not in ``trials``)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "settings": self.settings.to_json(),
            "trials": self.trials,
            "feasible": self.feasible,
            "repeats": self.repeats,
            "front": [p.to_json() for p in self.front],
            "seconds": self.seconds,
        }


def tally(study: optuna.Study) -> tuple[int, int, int]:
    """Distinct subnets of the finished trials, how many of them are feasible, and the repeats."""
    done = finished(study)
    subnets = distinct(done)
    return len(subnets), sum(map(is_feasible, subnets)), len(done) - len(subnets)


def summary(study: optuna.Study, storage: str, settings: SearchSettings, seconds: float = 0.0) -> SearchResult:
    subnets, feasible, repeats = tally(study)
    return SearchResult(study.study_name, storage, settings, subnets, feasible, front(study), seconds, repeats)


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
    """Run (or continue) a study until it has ``trials`` distinct subnets evaluated (:func:`distinct`),
    counted in the storage, so any number of workers (here or on other machines) end with exactly
    that many; a sampler's repeats are finished trials too, reported as ``repeats``."""
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hwnas reports what a study does itself
    name = check_study_name(study_name or settings.default_name())
    run, costs = _load(run_dir, settings)  # a missing run or predictor fails here, before any worker starts
    url = storage or default_storage(run_dir)
    store = open_storage(url, on_stale=requeue_anchor)
    lock = StorageLock(url, f"study:{name}")
    try:
        with lock:
            anchors = {} if sampler in EVOLUTION else _anchors(run.space)
            study = create_or_check(store, name, settings, anchors, weights_identity(run))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise storage_error(url, exc, "cannot create study in") from None
    finally:
        lock.close()
    done = len(distinct(finished(study)))
    if done < trials:
        bar = tqdm(total=trials, initial=done, desc=f"search {name}", unit="trial", disable=not progress)
        job = Job(run_dir, settings, url, name, sampler, seed, trials, 1 if workers > 1 else None)
        if workers == 1:
            work(job, [lambda study, trial: _tick(bar, study)], (run, costs))
        else:
            _run_workers([job] * min(workers, trials - done), bar, study)
        _tick(bar, study)  # other workers may have finished the last trials
        bar.close()
    return summary(study, redact(url), settings, time.perf_counter() - started)


def _anchors(space: SearchSpace) -> dict[str, dict[str, int]]:
    """The smallest and the largest subnet: the two the sandwich rule trains at every step, so the
    best-trained ends of the front, evaluated first by every Optuna sampler (the paper's evolution
    keeps its own random start)."""
    encoding = Encoding(space)
    return {"smallest": encoding.encode(space.smallest()), "largest": encoding.encode(space.largest())}


def _tick(bar: tqdm, study: optuna.Study) -> None:
    """Progress: distinct subnets done, how many are feasible, repeats, the size of the current front."""
    bar.n, feasible, repeats = tally(study)
    bar.set_postfix(feasible=feasible, repeats=repeats, front=len(study.best_trials), refresh=False)
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
