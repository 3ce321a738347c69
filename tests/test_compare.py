"""The OPs-vs-latency comparison on hand-built fronts with a fake, counting ``measure``."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from hwnas.arch import Arch
from hwnas.search.comparison import compare, default_budgets
from hwnas.search.comparison_report import text as report_text
from hwnas.search.comparison_report import write_report
from hwnas.search.hypervolume import dominates, hypervolume, non_dominated
from hwnas.search.points import Point
from hwnas.space import NASBNN

TARGET = "fake-cpu"
ARCHS = [NASBNN.sample(random.Random(i)) for i in range(6)]
PNG = b"\x89PNG\r\n\x1a\n"


def point(number: int, arch: int, acc: float, ops_m: float, predicted_ms: float | None) -> Point:
    latency = {} if predicted_ms is None else {TARGET: predicted_ms}
    return Point(number, ARCHS[arch], ARCHS[arch], acc, ops_m, latency)


class FakeMeasure:
    """Known median latency per arch index; counts calls per arch."""

    def __init__(self, ms: dict[int, float]) -> None:
        self.ms = {ARCHS[i]: v for i, v in ms.items()}
        self.calls: Counter[Arch] = Counter()

    def __call__(self, arch: Arch) -> tuple[float, float]:
        self.calls[arch] += 1
        return self.ms[arch], 0.01 * self.ms[arch]


# OPs front: trials 0-2 on archs 0-2; latency front: trials 10-12 on archs 3, 4 and 2 (shared with trial 2).
# Latency-front 10 dominates OPs-front 0 and 11 dominates 1 in measured space; 12 equals 2.
OPS_FRONT = [point(0, 0, 0.60, 100, 2.08), point(1, 1, 0.65, 150, 5.5), point(2, 2, 0.70, 200, 9.3)]
LATENCY_FRONT = [point(10, 3, 0.62, 160, 1.9), point(11, 4, 0.66, 180, 4.1), point(12, 2, 0.70, 200, 9.3)]
MEASURED = {0: 2.0, 1: 6.0, 2: 10.0, 3: 1.8, 4: 4.0}


@pytest.fixture
def measure() -> FakeMeasure:
    return FakeMeasure(MEASURED)


@pytest.fixture
def comparison(measure):
    return compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, budgets=[10.0, 1.5, 2.0, 5.0])


def test_dominance_and_exact_hypervolume():
    # (60, 2) and (70, 4) are the front; (65, 5) is dominated by (70, 4) and adds nothing.
    points = [(60.0, 2.0), (70.0, 4.0), (65.0, 5.0)]
    assert non_dominated(points) == [0, 1]
    assert dominates((70.0, 4.0), (65.0, 5.0)) and dominates((70.0, 4.0), (70.0, 5.0))
    assert not dominates((70.0, 4.0), (70.0, 4.0)) and not dominates((60.0, 2.0), (70.0, 4.0))
    assert hypervolume(points, (0.0, 10.0)) == pytest.approx(8 * 60 + 6 * 10)
    assert hypervolume(points[:2], (0.0, 10.0)) == hypervolume(points, (0.0, 10.0))
    assert hypervolume([(70.0, 12.0), (-1.0, 1.0)], (0.0, 10.0)) == 0.0  # outside the reference box


def test_each_distinct_deployed_arch_is_measured_once(comparison, measure):
    assert measure.calls == Counter({ARCHS[i]: 1 for i in MEASURED})
    assert [m.measured_ms for m in comparison.latency] == [1.8, 4.0, 10.0]
    assert [m.predicted_ms for m in comparison.ops] == [2.08, 5.5, 9.3]
    assert len(comparison.distinct()) == 5


def test_hypervolume_with_one_shared_reference(comparison):
    assert comparison.reference == pytest.approx((0.0, 11.0))
    hv = comparison.hypervolumes()
    assert hv["ops"] == pytest.approx(9 * 0.60 + 5 * 0.05 + 1 * 0.05)
    assert hv["latency"] == pytest.approx(9.2 * 0.62 + 7 * 0.04 + 1 * 0.04)


def test_front_no_longer_non_dominated_on_measured_latency():
    # Fewer OPs but slower when measured: trial 0 falls off its own front, the HV is trial 1's alone.
    ops_front = [point(0, 0, 0.60, 100, 2.0), point(1, 1, 0.65, 150, 3.0)]
    c = compare(ops_front, [point(10, 2, 0.5, 300, 4.0)], TARGET, FakeMeasure({0: 5.0, 1: 3.0, 2: 4.0}))
    assert c.reference == pytest.approx((0.0, 5.5))
    assert c.hypervolumes()["ops"] == pytest.approx(2.5 * 0.65)


def test_dominated_share(comparison):
    assert comparison.dominated_share() == {"ops": pytest.approx(2 / 3), "latency": 0.0}


def test_budget_picks(comparison):
    picks = {budget: {name: m and m.point.number for name, m in p.items()} for budget, p in comparison.picks()}
    assert picks == {
        1.5: {"ops": None, "latency": None},
        2.0: {"ops": 0, "latency": 10},  # a latency that equals the budget fits
        5.0: {"ops": 0, "latency": 11},
        10.0: {"ops": 2, "latency": 12},
    }


def test_default_budgets_span_the_measured_range_rounded_up():
    assert default_budgets([2.0, 4.0, 10.0, 1.8], n=4) == pytest.approx((1.8, 4.54, 7.27, 10.0))
    assert default_budgets([0.12345, 0.2], n=4) == pytest.approx((0.124, 0.149, 0.175, 0.2))
    assert default_budgets([2.0, 4.0, 10.0, 1.8]) == pytest.approx((1.8, 3.85, 5.9, 7.95, 10.0))  # 5 by default
    c = compare(OPS_FRONT, LATENCY_FRONT, TARGET, FakeMeasure(MEASURED))
    assert c.budgets == default_budgets(list(MEASURED.values()))
    assert c.picks()[0][1]["latency"].point.number == 10  # the fastest subnet fits the smallest budget


def test_kendall_tau_and_predictor_error(comparison):
    ranking = comparison.ranking()
    assert ranking["subnets"] == 5
    assert ranking["predictor"]["kendall_tau"] == pytest.approx(1.0)  # predictions in measured order
    assert ranking["predictor"]["within_10pct"] == 1.0
    assert ranking["predictor"]["within_5pct"] == pytest.approx(2 / 5)  # 4 % and 2.5 % off; others 5.6-8.3 %


def test_kendall_tau_signs_on_monotone_data():
    # More OPs, faster; predictions in measured order except one missing prediction.
    ops_front = [point(i, i, 0.6 + 0.01 * i, 100 + 10 * i, 5.0 - i) for i in range(3)]
    latency_front = [point(10, 3, 0.5, 200, None), point(11, 4, 0.55, 300, 0.5)]
    c = compare(ops_front, latency_front, TARGET, FakeMeasure({0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0}))
    ranking = c.ranking()
    assert ranking["ops_kendall_tau"] == pytest.approx(-1.0)
    assert ranking["predictor"]["kendall_tau"] == pytest.approx(1.0)
    assert ranking["predictor"]["n"] == 4


def test_to_json_round_trips(comparison):
    data = comparison.to_json()
    assert json.loads(json.dumps(data)) == data
    assert Arch.from_json(data["fronts"]["latency"][2]["deployed"]) == ARCHS[2]
    assert data["budgets"][0] == {"budget_ms": 1.5, "ops": None, "latency": None}
    assert data["budgets"][1]["latency"]["measured_ms"] == 1.8


def test_budget_picks_count_a_difference_only_beyond_the_accuracy_noise(measure):
    exact = compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, budgets=[10.0, 1.5, 2.0, 5.0])
    assert exact.pick_outcomes() == {"more": 2, "within_noise": 2, "less": 0}  # +0.02 and +0.06 count
    measured = compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, [10.0, 1.5, 2.0, 5.0], accuracy_images=2000)
    assert measured.accuracy_noise(0.62, 0.60) == pytest.approx(0.0308, abs=1e-4)  # > 0.02: within noise
    assert measured.pick_outcomes() == {"more": 1, "within_noise": 3, "less": 0}
    few = compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, [10.0, 1.5, 2.0, 5.0], accuracy_images=100)
    assert few.pick_outcomes() == {"more": 0, "within_noise": 4, "less": 0}  # 0.06 < 0.136 on 100 images
    assert "within noise at 4 (less than two standard errors of accuracies on 100 validation" in report_text(few)
    assert few.to_json()["budget_picks"] == {"more": 0, "within_noise": 4, "less": 0, "accuracy_images": 100}


def test_text_and_report(comparison, tmp_path):
    text = report_text(comparison)
    assert "latency - ops acc" in text and "+0.020" in text and "2/3 (67%)" in text
    report = write_report(comparison, tmp_path / "cmp")
    assert report == tmp_path / "cmp" / "report.md"
    md = report.read_text()
    for expected in (
        "## OPs front (3 subnets)",
        "## latency front (3 subnets)",
        "Hypervolume",
        "Kendall tau",
        "| 11 | 0.660 | 180.0 | 4.1 | 4 |",
    ):
        assert expected in md
    for name in ("accuracy_vs_latency.png", "accuracy_vs_ops.png"):
        assert f"]({name})" in md
        assert (tmp_path / "cmp" / name).read_bytes().startswith(PNG)


def test_the_share_of_the_latency_front_over_the_search_budget_is_reported(measure):
    """The latency search had a 9.5 ms budget held with a 1.02 margin; one of its 3 subnets measures 10 ms."""
    c = compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, search_budget_ms=9.5, margin=1.02)
    over = c.to_json()["over_budget"]
    assert over == {"budget_ms": 9.5, "margin": 1.02, "over": 1, "n": 3, "share": pytest.approx(1 / 3)}
    assert "measured over the search's budget of 9.5 ms: 1/3 (33%)" in report_text(c) and "times 1.020" in report_text(
        c
    )
    plain = compare(OPS_FRONT, LATENCY_FRONT, TARGET, FakeMeasure(MEASURED))
    assert plain.to_json()["over_budget"] is None and "over the search's budget" not in report_text(plain)


def test_other_trials_widen_the_ranking_but_not_the_fronts():
    """Trials off both fronts are measured for the rank correlations only."""
    measure = FakeMeasure({**MEASURED, 5: 3.0})
    other = point(20, 5, 0.50, 170, 3.1)
    c = compare(OPS_FRONT, LATENCY_FRONT, TARGET, measure, budgets=[10.0], others=[other])
    assert c.ranking()["subnets"] == 6 and measure.calls[ARCHS[5]] == 1
    assert [m.point.number for m in c.others] == [20]
    assert all(m.point.number != 20 for front in c.fronts.values() for m in front)
    assert c.to_json()["other_subnets"][0]["measured_ms"] == 3.0
    assert "1 other trials" in report_text(c)


def test_spans_and_whether_the_hypervolume_difference_exceeds_noise(comparison):
    assert comparison.spans() == pytest.approx({"ops": 10.0 / 2.0, "latency": 10.0 / 1.8})
    low, high = comparison.hypervolume_bounds()["latency"]
    assert low < comparison.hypervolumes()["latency"] < high
    assert comparison.hypervolume_verdict() == "latency front larger, beyond measurement noise"

    class Noisy(FakeMeasure):
        def __call__(self, arch: Arch) -> tuple[float, float]:
            return super().__call__(arch)[0], 3.0  # a spread as large as the differences

    noisy = compare(OPS_FRONT, LATENCY_FRONT, TARGET, Noisy(MEASURED), budgets=[10.0])
    assert noisy.hypervolume_verdict() == "latency front larger, within measurement noise"
    assert "within measurement noise" in report_text(noisy) and "spans 5.00x on the OPs front" in report_text(noisy)


def test_a_subnet_far_from_its_prediction_is_measured_again(monkeypatch):
    """One reading 2.4x its prediction (a slow window the reference beside it missed) is discarded
    and measured once more; the second stands and both are reported. Readings near their
    predictions are left alone."""
    from hwnas.search import comparison as cmp
    from hwnas.targets.store import Key, Measurement, Store, network_key
    from hwnas.targets.target import load_target

    target = load_target("local")
    near, far, off = NASBNN.smallest(), NASBNN.largest(), NASBNN.sample(random.Random(5))
    readings = {near: [1.0], far: [2.4, 1.1], off: [1.3, 1.02]}  # off: 1.3x, as a slow window read it
    calls: list[list[Arch]] = []

    def fake_measure(target, archs, resolution, timing=None):
        calls.append(list(archs))
        return {a: Measurement(Key("network", "{}", resolution), readings[a].pop(0), 0.01, 10, "now") for a in archs}

    monkeypatch.setattr(cmp, "measure_networks", fake_measure)
    discarded: list = []
    monkeypatch.setattr(Store, "discard", lambda self, keys: discarded.extend(keys))
    measured = fake_measure(target, [near, far, off], 224)
    predicted = {near: 1.05, far: 1.0, off: 1.0}
    report = cmp.remeasure_far(target, measured, predicted, 224)
    assert calls[-1] == [far, off] and discarded == [network_key(far, 224), network_key(off, 224)]
    assert measured[far].nominal_ms == 1.1 and measured[near].nominal_ms == 1.0 and measured[off].nominal_ms == 1.02
    assert [(r["first_ms"], r["second_ms"], r["predicted_ms"]) for r in report] == [(2.4, 1.1, 1.0), (1.3, 1.02, 1.0)]
    assert cmp.remeasure_far(target, measured, predicted, 224) == ()  # nothing far now


def test_the_report_states_the_rule_its_second_measurements_followed(comparison):
    """The remeasure line names the threshold in force (``REMEASURE_OFF``), not a former one."""
    from dataclasses import replace

    from hwnas.search.comparison import REMEASURE_OFF

    again = replace(comparison, remeasured=({"first_ms": 2.4, "second_ms": 1.1, "predicted_ms": 1.0},))
    line = next(x for x in report_text(again).splitlines() if "Measured again" in x)
    assert f"more than {REMEASURE_OFF:.0%}: 2.4 -> 1.1 ms" in line and "1.5x" not in line
    assert "Measured again" not in report_text(comparison)
