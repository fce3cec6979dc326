"""The training benchmark's paired timing (``benchmarks.calls.run_paired``) and how the report reads it,
on a fake clock: a step's cost in standard steps is the median ratio of blocks timed back to back."""
from __future__ import annotations

from types import SimpleNamespace

from benchmarks import calls, report
from benchmarks.configs import Rounds


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Benchmark:
    """pytest-benchmark's fixture as run_paired uses it: pedantic rounds of setup + timed target."""

    def __init__(self, clock):
        self.clock, self.extra_info = clock, {}

    def pedantic(self, target, setup, rounds, iterations):
        data = []
        for _ in range(rounds):
            setup()
            start = self.clock.now
            target()
            data.append(self.clock.now - start)
        self.stats = SimpleNamespace(stats=SimpleNamespace(data=data))


def _paired(monkeypatch, rounds, step_s, per_call=1):
    clock = _Clock()
    monkeypatch.setattr(calls, "time", clock)
    baseline_costs = iter([0.002, 0.002, 0.002] + [0.002, 0.004] * 1000)  # warm-up, pair probe, then alternating

    def baseline():
        clock.now += next(baseline_costs)

    def fn():
        clock.now += step_s

    bench = _Benchmark(clock)
    calls.run_paired(bench, fn, baseline, rounds, "train", {"method": "jafr_fd"}, per_call=per_call)
    return bench.extra_info


def test_paired_ratio_is_the_median_of_per_block_ratios(monkeypatch):
    info = _paired(monkeypatch, Rounds(min_rounds=5, max_time=0.2, warmup_calls=1), step_s=0.006)
    k = info["steps_per_call"]
    assert k == round(0.1 / 0.008)  # blocks of about 0.1 s
    assert info["method"] == "jafr_fd" and info["kind"] == "train"
    # each block's baseline averages its k calls (alternating 2 and 4 ms): 3 ms, so every ratio is 2
    assert abs(info["baseline_median_s"] - 0.003) < 1e-12
    assert abs(info["x_baseline"] - 2.0) < 1e-9


def test_paired_ratio_is_per_step_for_calls_of_several_steps(monkeypatch):
    info = _paired(monkeypatch, Rounds(min_rounds=1, max_time=0.0, warmup_calls=1), step_s=0.012, per_call=4)
    assert info["steps_per_call"] == 4  # smoke: one call per block, one round
    assert abs(info["x_baseline"] - 0.012 / 4 / 0.002) < 1e-9


def test_report_reads_the_paired_ratio_before_the_ratio_of_medians():
    standard = {"median_s": 0.010}
    assert report.x_standard({"median_s": 0.030}, standard) == 3.0
    assert report.x_standard({"median_s": 0.030, "x_baseline": 2.2}, standard) == 2.2
    assert report.x_standard({"median_s": 0.030}, None) is None
