"""The measurement store and the profiling driver: resume after interruption, never measure twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hwnas.arch import LayerConfig
from hwnas.errors import HwnasError
from hwnas.space import NASBNN
from hwnas.targets import driver
from hwnas.targets.configs import layer_configs, sample_configs, sample_networks
from hwnas.targets.driver import BUILD_CHUNK, RetryLater, layer_jobs, network_jobs, run_jobs
from hwnas.targets.store import MEASURE_METHODS, Key, Store, store_path, summarize
from hwnas.targets.target import load_target


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def _no_sleeping(monkeypatch) -> None:
    """A slow state is waited out by reading the (fake) reference, never by sleeping."""
    monkeypatch.setattr(driver, "SLOW_STATE_POLL_S", 0.0)


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "m.sqlite", "fingerprint", "0.27-test") as s:
        yield s


class CountingMeasure:
    """A fake layer measure: counts builds per config, raises KeyboardInterrupt on build number
    ``stop_at``, fails the builds of ``fail`` and the timings of ``fail_timing``; ``events`` is
    the order of builds and timings."""

    def __init__(
        self,
        stop_at: int | None = None,
        fail: set[LayerConfig] | None = None,
        fail_timing: set[LayerConfig] | None = None,
    ) -> None:
        self.calls: list[LayerConfig] = []
        self.events: list[tuple[str, LayerConfig]] = []
        self.stop_at = stop_at
        self.fail = fail or set()
        self.fail_timing = fail_timing or set()

    def __call__(self, config: LayerConfig) -> Callable[[], list[float]]:
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(config)
        self.events.append(("build", config))
        if config in self.fail:
            raise RuntimeError("compile failed\nwith details")

        def time() -> list[float]:
            self.events.append(("time", config))
            if config in self.fail_timing:
                raise ConnectionError("device lost")
            return [config.c_in * 1e-3, config.c_in * 1.1e-3, config.c_in * 1.2e-3]

        return time


def test_summarize_median_and_iqr():
    assert summarize([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)
    with pytest.raises(ValueError):
        summarize([])


def test_keys_are_canonical(store):
    a = Key.of("layer", {"k": 3, "c_in": 8}, 224)
    assert a == Key.of("layer", {"c_in": 8, "k": 3}, 224) and a.config == '{"c_in":8,"k":3}'
    store.add(a, [1.0, 2.0, 3.0])
    assert store.missing([Key.of("layer", {"c_in": 8, "k": 3}, 224), Key.of("layer", {"c_in": 8}, 224)]) == [
        Key.of("layer", {"c_in": 8}, 224)
    ]
    with pytest.raises(ValueError, match="kind"):
        Key.of("conv", {}, 224)


def test_add_keeps_the_first_and_records_everything(store):
    key = Key.of("network", NASBNN.smallest().to_json(), 224)
    first = store.add(key, [2.0, 1.0, 3.0])
    store.add(key, [9.0])
    (row,) = store.measurements("network")
    assert row == first and (row.median_ms, row.spread_ms, row.repeats) == (2.0, 1.0, 3)
    assert store.counts() == {"layer": 0, "stem": 0, "head": 0, "network": 1}


def test_other_tvm_version_or_target_does_not_count(store):
    key = Key.of("layer", {"c_in": 8}, 224)
    store.add(key, [1.0])
    others = (
        Store(store.path, "fingerprint", "0.28"),
        Store(store.path, "other cpu", "0.27-test"),
        Store(store.path, "fingerprint", "0.27-test", {**MEASURE_METHODS, "layer": "kernels-0"}),
    )
    for other in others:
        with other:
            assert other.missing([key]) == [key] and other.measurements() == []


def test_a_new_method_of_one_kind_keeps_the_other_kinds(store):
    layer, stem = Key.of("layer", {"c_in": 8}, 224), Key.of("stem", {"c": 24}, 224)
    store.add(layer, [1.0])
    store.add(stem, [2.0])
    with Store(store.path, "fingerprint", "0.27-test", {**MEASURE_METHODS, "stem": "lanes-0"}) as other:
        assert other.missing([layer, stem]) == [stem]
        assert [m.key for m in other.measurements()] == [layer] and other.get(stem) is None


def test_interrupted_profiling_resumes_without_measuring_twice(tmp_path):
    configs = sample_configs(layer_configs(NASBNN, 224), 12, seed=0)
    path = tmp_path / "m.sqlite"
    interrupted = CountingMeasure(stop_at=5)
    with Store(path, "fp", "v") as store, pytest.raises(KeyboardInterrupt):
        run_jobs(store, layer_jobs(configs, 224, interrupted), progress=False)
    assert len(interrupted.calls) == 5
    resumed = CountingMeasure()
    with Store(path, "fp", "v") as store:  # a new process would open the file anew
        assert len(store.measurements("layer")) == 5
        report = run_jobs(store, layer_jobs(configs, 224, resumed), progress=False)
        assert (report.total, report.already, report.measured) == (12, 5, 7)
        stored = [LayerConfig.from_json(m.key.config_json()) for m in store.measurements("layer")]
    assert sorted(interrupted.calls + resumed.calls) == sorted(configs) == sorted(stored)
    with Store(path, "fp", "v") as store:
        again = CountingMeasure()
        assert run_jobs(store, layer_jobs(configs, 224, again), progress=False).measured == 0 and not again.calls


def test_failures_are_reported_skipped_and_retried(store):
    configs = layer_configs(NASBNN, 224)[:4]
    flaky = CountingMeasure(fail={configs[1]})
    report = run_jobs(store, layer_jobs(configs, 224, flaky), progress=False)
    assert report.measured == 3 and report.failed == [(f"layer {configs[1]}", "compile failed")]
    retry = CountingMeasure()
    assert run_jobs(store, layer_jobs(configs, 224, retry), progress=False).measured == 1
    assert retry.calls == [configs[1]]


def test_parallel_builds_finish_a_chunk_before_it_is_timed(store):
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 3]
    measure = CountingMeasure(fail={configs[2]}, fail_timing={configs[5]})
    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, build_workers=2)
    assert report.measured == len(configs) - 2
    assert report.failed == [(f"layer {configs[2]}", "compile failed"), (f"layer {configs[5]}", "device lost")]
    kinds = [kind for kind, _ in measure.events]
    first_time = kinds.index("time")
    assert kinds[:first_time] == ["build"] * BUILD_CHUNK  # no build runs beside a timed job
    assert kinds[first_time : first_time + BUILD_CHUNK - 1] == ["time"] * (BUILD_CHUNK - 1)  # one build failed
    assert [c for kind, c in measure.events if kind == "time"] == [c for c in configs if c != configs[2]]
    stored = {LayerConfig.from_json(m.key.config_json()) for m in store.measurements("layer")}
    assert stored == set(configs) - {configs[2], configs[5]}


def test_a_timing_in_a_slow_window_is_retried_at_the_end_from_its_build(store):
    configs = layer_configs(NASBNN, 224)[:4]
    slow_once, slow_always = configs[0], configs[1]
    timings: list[LayerConfig] = []

    def measure(config):
        def time():
            timings.append(config)
            if config == slow_always or (config == slow_once and timings.count(config) == 1):
                raise RetryLater("slow window")
            return [1.0]

        return time

    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False)
    assert timings == [*configs, slow_once, slow_always]
    assert report.measured == 3 and report.failed == [(f"layer {slow_always}", "slow window")]


def test_a_run_of_failures_stops_the_run(store):
    configs = layer_configs(NASBNN, 224)[:10]
    broken = CountingMeasure(fail=set(configs))
    report = run_jobs(store, layer_jobs(configs, 224, broken), progress=False, max_failures_in_a_row=3)
    assert len(broken.calls) == 3 and report.measured == 0 and "3 failures in a row" in report.stopped
    flaky = CountingMeasure(fail={configs[0], configs[2]})
    report = run_jobs(store, layer_jobs(configs, 224, flaky), progress=False, max_failures_in_a_row=2)
    assert report.measured == 8 and report.stopped is None


def test_network_jobs_use_the_hook(store):
    archs = sample_networks(NASBNN, 3, seed=2)
    seen = []

    def measure_network(arch, resolution):
        seen.append((arch, resolution))
        samples = [float(len(seen))]
        return lambda: samples

    report = run_jobs(store, network_jobs(archs, 160, measure_network), progress=False)
    assert report.measured == 3 and seen == [(a, 160) for a in archs]
    assert {m.key.resolution for m in store.measurements("network")} == {160}


def test_one_profiler_per_store(store):
    with store.exclusive():
        with (
            Store(store.path, "fingerprint", "0.27-test") as other,
            pytest.raises(HwnasError, match="another profiler"),
        ):
            with other.exclusive():
                pass
    with store.exclusive():  # released
        pass


def test_store_lives_in_hwnas_home(_home):
    target = load_target("x86-avx2")
    assert store_path("x86-avx2") == _home / "measurements" / "x86-avx2.sqlite"
    with Store.for_target(target, "v") as store:
        assert store.path.is_file() and store.target == target.fingerprint()


def test_batches_are_bracketed_by_reference_readings_and_read_in_nominal_units(store):
    """Each row records the mean of the readings around its batch; the store reads rows relative to
    its first reference, so a batch timed while the device ran 2x slow comes out right."""
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 2]
    readings = iter([3.9, 4.1, 8.2, 8.6, 8.3, 8.5])  # the second batch ran 2x slow, and again at the end
    second = set(configs[BUILD_CHUNK:])

    def measure(config):
        return lambda: [2.0 * 2.1 if config in second else 2.0]

    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, reference=lambda: next(readings))
    assert report.measured == len(configs) and report.to_json()["reference_ms"] == [3.9, 4.1, 8.2, 8.6, 8.3, 8.5]
    rows = store.measurements("layer")
    assert store.nominal_reference_ms() == 4.0
    with Store(store.path, store.target, store.version) as again:  # another process reads the same units
        assert again.measurements("layer") == rows
    assert [m.reference_ms for m in rows] == pytest.approx([4.0] * BUILD_CHUNK + [8.4] * 2)
    assert [m.nominal_ms for m in rows] == pytest.approx([2.0] * len(configs))
    assert [m.median_ms for m in rows][-1] == pytest.approx(4.2)


def test_a_batch_whose_readings_disagree_is_timed_again(store):
    """Seen here: the reference read 1.6 ms before a batch and 2.9 ms after it, while the batch's
    networks had run at the fast speed; scaling them by the slow reading made them 1.8x too fast.
    The batch is timed again between fresh readings, and its rows take that pass's timings; that
    pass, slow throughout, is more than SLOW_STATE above the run's fastest reading, so the batch is
    timed once more at the end, in the fast state."""
    configs = layer_configs(NASBNN, 224)[:3]
    readings = iter([4.0, 8.0, 8.0, 8.2, 4.0, 4.1])  # fast before, slow after: the pass again, slow; at the end fast
    calls: dict[LayerConfig, int] = {}

    def measure(config):
        def timer():
            calls[config] = calls.get(config, 0) + 1
            return [4.0 if calls[config] == 2 else 2.0]  # the second pass slow (4.0), the others fast (2.0)

        return timer

    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, reference=lambda: next(readings))
    assert report.measured == 3 and report.to_json()["reference_ms"] == [4.0, 8.0, 8.0, 8.2, 4.0, 4.1]
    assert list(calls.values()) == [3] * 3
    rows = store.measurements("layer")
    assert [m.median_ms for m in rows] == [2.0] * 3 and [m.reference_ms for m in rows] == pytest.approx([4.05] * 3)
    assert [m.nominal_ms for m in rows] == pytest.approx([2.0] * 3)  # the store's first reference


def slow_first_time(slow: set[LayerConfig], calls: dict[LayerConfig, int]) -> Callable:
    """A fake measure: configs in ``slow`` time 3.0 ms the first time (a slow state slows them 1.5x,
    unlike the reference's 2x), 2.0 ms afterwards, as every other config does; ``calls`` counts."""

    def measure(config):
        def timer():
            calls[config] = calls.get(config, 0) + 1
            return [3.0 if config in slow and calls[config] == 1 else 2.0]

        return timer

    return measure


def test_a_batch_timed_in_a_slow_state_is_timed_again_at_the_end_of_the_run(store):
    """The device's slow states slow networks unevenly, so a batch whose readings agree but sit far
    above the store's nominal reference is timed once more after the others, and its rows replaced."""
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 2]
    readings = iter([4.0, 4.0, 8.0, 8.0, 4.0, 4.1])  # the second batch in a 2x slow state, over by the end
    calls: dict[LayerConfig, int] = {}
    measure = slow_first_time(set(configs[BUILD_CHUNK:]), calls)
    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, reference=lambda: next(readings))
    assert report.measured == len(configs) and len(report.to_json()["reference_ms"]) == 6
    rows = store.measurements("layer")
    assert [m.median_ms for m in rows] == [2.0] * len(configs) and [calls[c] for c in configs[-2:]] == [2, 2]
    assert [m.reference_ms for m in rows][-2:] == pytest.approx([4.05] * 2)
    assert [m.nominal_ms for m in rows][-2:] == pytest.approx([2.0 * 4.0 / 4.05] * 2)


def test_a_run_that_began_in_a_slow_state_times_its_first_batches_again(store, monkeypatch):
    """Seen 2026-12-01: the profile began in the VM's two-speed state; its first reference (2.08 ms,
    the store's nominal one) was slow, every later one about 1.1 ms, so no batch was flagged and the
    first batches' rows came out too fast against the rest (the slow state slows layers less than
    the reference). Judged against the run's fastest reading, they are timed again at the end."""
    warnings = logged_warnings(monkeypatch)
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 2]
    readings = iter([8.0, 8.0, 4.0, 4.0, 4.0, 4.1])  # slow first batch, fast second; the pass again, fast
    calls: dict[LayerConfig, int] = {}
    measure = slow_first_time(set(configs[:BUILD_CHUNK]), calls)
    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, reference=lambda: next(readings))
    assert report.measured == len(configs) and report.to_json()["reference_ms"] == [8.0, 8.0, 4.0, 4.0, 4.0, 4.1]
    assert [calls[c] for c in configs] == [2] * BUILD_CHUNK + [1, 1]
    rows = store.measurements("layer")
    assert len(rows) == len(configs) and {m.median_ms for m in rows} == {2.0}
    assert sorted(m.reference_ms for m in rows) == pytest.approx([4.0] * 2 + [4.05] * BUILD_CHUNK)
    nominal = [m.nominal_ms for m in rows]
    assert max(nominal) / min(nominal) == pytest.approx(4.05 / 4.0)  # one unit for every row
    assert any("showed the device had been in a slow state" in w for w in warnings)


def logged_warnings(monkeypatch) -> list[str]:
    """The driver's warnings, whatever handlers earlier tests left on its logger."""
    warnings: list[str] = []
    monkeypatch.setattr(driver._log, "warning", lambda msg, *args, **kwargs: warnings.append(msg))
    return warnings


def test_the_last_pass_waits_for_the_slow_state_to_pass(store, monkeypatch):
    """A short run (compare's dozen subnets) ends while the device is still slow: the pass at the
    end reads the reference until it is back near nominal, then times the slow batch."""
    monkeypatch.setattr(driver, "SLOW_STATE_WAIT_S", 60.0)
    warnings = logged_warnings(monkeypatch)
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 2]
    readings = iter([4.0, 4.0, 8.0, 8.0, 9.0, 8.5, 4.0, 4.2])  # slow for two more readings, then nominal
    measure = slow_first_time(set(configs[BUILD_CHUNK:]), {})
    report = run_jobs(store, layer_jobs(configs, 224, measure), progress=False, reference=lambda: next(readings))
    assert report.to_json()["reference_ms"] == [4.0, 4.0, 8.0, 8.0, 9.0, 8.5, 4.0, 4.2]
    rows = store.measurements("layer")
    assert [m.median_ms for m in rows][-2:] == [2.0, 2.0] and [m.reference_ms for m in rows][-2:] == pytest.approx(
        [4.1] * 2
    )
    assert any("waiting up to 60 s" in w for w in warnings) and not any("stayed" in w for w in warnings)


def test_the_wait_for_a_slow_state_is_bounded(store, monkeypatch):
    warnings = logged_warnings(monkeypatch)
    configs = layer_configs(NASBNN, 224)[: BUILD_CHUNK + 1]
    readings = iter([4.0, 4.0, 8.0, 8.0, 8.0, 8.2])  # slow to the end: one poll, then the pass in the slow state
    report = run_jobs(
        store, layer_jobs(configs, 224, lambda c: lambda: [2.0]), progress=False, reference=lambda: next(readings)
    )
    assert report.measured == len(configs) and len(report.to_json()["reference_ms"]) == 6
    assert [m.reference_ms for m in store.measurements("layer")][-1] == pytest.approx(8.1)
    assert any("stayed in its slow state" in w for w in warnings)


def test_a_batch_that_never_settles_keeps_its_last_pass_and_the_median_reading(store):
    configs = layer_configs(NASBNN, 224)[:2]
    readings = iter([4.0, 8.0, 4.0, 8.0, 4.0, 8.0, 4.2])  # two passes again, both moving; then a third reading

    report = run_jobs(
        store, layer_jobs(configs, 224, lambda c: lambda: [2.0]), progress=False, reference=lambda: next(readings)
    )
    assert report.measured == 2 and len(report.to_json()["reference_ms"]) == 7
    assert [m.reference_ms for m in store.measurements("layer")] == [4.2, 4.2]


def test_a_store_written_before_references_opens_and_reads_as_timed(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema of windows-5 stores: no reference column
        db.execute(
            "CREATE TABLE measurements (target TEXT, tvm_version TEXT, method TEXT, kind TEXT, config TEXT,"
            " resolution INTEGER, median_ms REAL, spread_ms REAL, repeats INTEGER, measured_at TEXT,"
            " PRIMARY KEY (target, tvm_version, method, kind, config, resolution))"
        )
        db.execute("INSERT INTO measurements VALUES ('fp', 'v', 'windows-5', 'layer', '{}', 224, 1.0, 0.1, 5, 't')")
    with Store(path, "fp", "v") as store:
        assert store.measurements() == []  # an older method: not counted
        key = Key.of("layer", {"c_in": 8}, 224)
        assert store.add(key, [3.0]).nominal_ms == 3.0 and store.get(key).reference_ms is None
