"""pytest wiring of the benchmark suite: options, the suite fixture and the case parametrisation.

Run through ``python -m benchmarks`` (which adds the pytest-benchmark options and post-processes the
JSON); ``pytest benchmarks -o python_files='bench_*.py' --jafr-smoke`` works too.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks import configs


def pytest_addoption(parser):
    group = parser.getgroup("jafr", "jafr_kernels benchmarks")
    group.addoption("--jafr-smoke", action="store_true", help="tiny shapes and one round per case (CI)")
    group.addoption("--jafr-gpu", action="store_true", help="run on CUDA: no pruning, fp32 and bf16")
    group.addoption("--jafr-threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    group.addoption("--jafr-deadline", type=float, default=0.0,
                    help="time.time() after which the remaining cases are skipped (0: no limit)")


def _suite(config) -> configs.Suite:
    return configs.Suite.make(gpu=config.getoption("--jafr-gpu"), smoke=config.getoption("--jafr-smoke"))


def pytest_configure(config):
    threads = config.getoption("--jafr-threads", default=0)
    if threads:
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc):
    suite = _suite(metafunc.config)
    grids = {
        "kernel_case": configs.kernel_cases,
        "profile_case": configs.profile_cases,
        "train_case": configs.train_cases,
        "profile_train_case": configs.profile_train_cases,
        "memory_case": configs.memory_cases,
        "quick_case": configs.quick_cases,
    }
    for name, grid in grids.items():
        if name in metafunc.fixturenames:
            cases = grid(suite)
            metafunc.parametrize(name, cases, ids=[c.id for c in cases])


@pytest.fixture(autouse=True)
def _time_limit(request):
    """Skip the cases that would start after the run's deadline, so a time-limited run still ends normally
    and writes the results of the cases it timed (a killed pytest writes no benchmark JSON)."""
    deadline = request.config.getoption("--jafr-deadline")
    if deadline and time.time() > deadline:
        pytest.skip("the run's time limit was reached before this case")


@pytest.fixture(scope="session")
def suite(request) -> configs.Suite:
    s = _suite(request.config)
    if s.device == "cuda" and not torch.cuda.is_available():
        pytest.exit("--gpu was given but torch.cuda.is_available() is False", returncode=2)
    return s


@pytest.fixture(scope="session")
def bench_rounds(suite) -> configs.Rounds:
    return configs.rounds(suite)


@pytest.fixture(scope="session")
def compiled_cache():
    from benchmarks.calls import CompiledCache, quiet_compile_warnings

    quiet_compile_warnings()
    return CompiledCache()



@pytest.fixture(scope="session")
def quick_compiled():
    """torch.compile objects of the hand-written eager penalty, one per plane size and dtype."""
    from benchmarks.calls import quiet_compile_warnings

    quiet_compile_warnings()
    return {}
