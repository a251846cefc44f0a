"""``leoclr bench``'s interleaved measurements, on a fake clock: the order of the calls, the medians and
the per-round ratios with their range (no wall-clock time is read or asserted)."""

import pytest

from leoclr_cli.workflows.bench import _row, interleave, paired_ratio, timed


class FakeClock:
    """A clock that moves only when a fake workload runs: ``work(name, seconds)`` advances it by
    ``seconds`` times the machine's current slowness and logs the call."""

    def __init__(self, slowness):
        self.now, self.calls, self.slowness = 0.0, [], list(slowness)

    def __call__(self):
        return self.now

    def work(self, name, seconds):
        def fn():
            factor = self.slowness[len(self.calls) % len(self.slowness)]
            self.calls.append(name)
            self.now += seconds * factor
        return fn


def test_rows_are_taken_in_turn_and_alternate_direction():
    clock = FakeClock([1.0])
    measures = {k: timed(clock.work(k, 1.0), 10, clock) for k in "ABC"}
    got = interleave(measures, rounds=4)
    # one untimed warm-up of each, then A B C, C B A, A B C, C B A
    assert clock.calls == list("ABC") + list("ABCCBAABCCBA")
    assert got == {k: [10.0] * 4 for k in "ABC"}
    clock.calls.clear()
    interleave(measures, rounds=1, warmup=False)
    assert clock.calls == list("ABC")


def test_ratios_hold_while_the_machine_speed_swings():
    # the machine runs at 1x, then 3x slower, then 1.5x, changing after every two calls: the rates swing
    # by 3x, but A and B of one round see the same speed, so every round's ratio is B's cost over A's (2x)
    slowness = [1, 1, 3, 3, 1.5, 1.5]
    clock = FakeClock(slowness)
    measures = {"A": timed(clock.work("A", 0.5), 100, clock), "B": timed(clock.work("B", 1.0), 100, clock)}
    got = interleave(measures, rounds=3, warmup=False)
    assert clock.calls == ["A", "B", "B", "A", "A", "B"]
    assert got["A"] == pytest.approx([200.0, 200 / 3, 200 / 1.5])
    assert max(got["A"]) / min(got["A"]) == pytest.approx(3.0)
    ratio, (lo, hi) = paired_ratio(got["A"], got["B"])
    assert ratio == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_paired_ratio_is_the_median_of_the_rounds_with_its_range():
    ratio, lo_hi = paired_ratio([10.0, 30.0, 12.0], [5.0, 10.0, 4.0])  # per round: 2, 3, 3
    assert ratio == 3.0 and lo_hi == [2.0, 3.0]


def test_engine_rows_take_medians_and_the_paired_ratio():
    def r(rate, peak=None):
        return {"rate": rate, "peak_gib": peak, "gpu_util": None}

    row = _row("train step", "cpu", {"mocov2": [r(120.0), r(60.0), r(90.0)], "leoclr": [r(100.0), r(40.0), r(80.0)]})
    assert row["mocov2"] == 90.0 and row["leoclr"] == 80.0 and row["rounds"] == 3
    assert row["cost"] == pytest.approx(1.2) and row["cost_spread"] == pytest.approx([1.125, 1.5])
    assert row["peak_gib"] is None and row["gpu_util"] is None
    peaked = _row("x", "cuda:0", {"mocov2": [r(1.0, 2.0)], "leoclr": [r(1.0, 3.5)]})
    assert peaked["peak_gib"] == 3.5
