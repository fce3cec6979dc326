"""``python -m benchmarks``: run the benchmark suite, print the tables, write the tagged results.

Runs the ``bench_*.py`` files under pytest-benchmark in this process, then turns its JSON into
``runs/benchmarks/<device>-<time>-<rev>.json`` (every row, tagged with device, torch/triton versions,
thread count and git revision; ``runs/`` is not tracked by git) plus a markdown file of all tables, and prints
the targets and the summary tables. Tracked files change only on request: ``--update-readme`` writes the
results into ``benchmarks/results/`` and regenerates the results section of ``benchmarks/README.md`` from there.

Examples::

    python -m benchmarks                 # full CPU suite (about 10 minutes on 2 cores)
    python -m benchmarks --smoke         # tiny shapes, one round per case (CI)
    python -m benchmarks --gpu           # CUDA suite: all shapes, fp32 and bf16, Triton targets
    python -m benchmarks --gpu --quick   # the headline freq_penalty cases only (minutes), GPU targets
    python -m benchmarks --gpu --quick --dry-run   # list the cases, run nothing (works without a GPU)
    python -m benchmarks --gpu --quick --time-limit 150   # cases that would start later are skipped
    python -m benchmarks --only training -k resnet
    python -m benchmarks --update-readme # full CPU suite, published: benchmarks/results/ + benchmarks/README.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import configs, report

PARTS = {"kernels": "bench_kernels.py", "training": "bench_training.py", "memory": "bench_memory.py"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="jafr_kernels benchmark suite (pytest-benchmark).")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round per case, no torch.compile (CI)")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA: unpruned grid, fp32 + bf16, GPU targets")
    parser.add_argument("--quick", action="store_true", help="with --gpu: the headline freq_penalty cases only "
                        "(fp32 + bf16; eager, compiled and reference baselines, every GPU backend, the copy floor)")
    parser.add_argument("--dry-run", action="store_true", help="print the cases that would run, run nothing")
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts (repeatable)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select cases")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the result files (default: {report.LOCAL_DIR.relative_to(report.HERE.parent)}/, "
                        f"or {report.RESULTS_DIR.relative_to(report.HERE.parent)}/ with --update-readme)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    readme = parser.add_mutually_exclusive_group()
    readme.add_argument("--update-readme", action="store_true",
                        help="publish a full run: write its results into benchmarks/results/ and regenerate the results "
                        "section of benchmarks/README.md (tracked files)")
    readme.add_argument("--no-readme", dest="update_readme", action="store_false",
                        help="leave benchmarks/README.md alone (the default)")
    parser.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS",
                        help="skip the cases that would start after this many seconds; the results of the "
                        "cases run are still written (for short GPU leases; 0: no limit)")
    parser.add_argument("--verbose", action="store_true", help="one line per case instead of dots")
    return parser.parse_args(argv)


def pytest_args(args, json_path: Path) -> list[str]:
    suite = configs.Suite.make(gpu=args.gpu, smoke=args.smoke)
    r = configs.rounds(suite)
    here = report.HERE
    files = [str(here / "bench_quick.py")] if args.quick else [str(here / PARTS[p]) for p in (args.only or sorted(PARTS))]
    out = files + [
        f"--rootdir={here.parent}",
        "-o", "python_files=bench_*.py",
        "-o", "addopts=",
        "-p", "no:cacheprovider",
        "-W", "ignore::UserWarning",
        "-v" if args.verbose else "-q",
        f"--benchmark-json={json_path}",
        f"--benchmark-min-rounds={r.min_rounds}",
        f"--benchmark-max-time={r.max_time}",
        "--benchmark-warmup=off",  # each case warms itself up (and compiles) before timing
        "--benchmark-quiet",
    ]
    if args.smoke:
        out.append("--jafr-smoke")
    if args.gpu:
        out.append("--jafr-gpu")
    if args.threads:
        out.append(f"--jafr-threads={args.threads}")
    if args.keyword:
        out += ["-k", args.keyword]
    if args.time_limit > 0:
        out.append(f"--jafr-deadline={time.time() + args.time_limit}")
    return out


def dry_run_cases(args, suite) -> list:
    """The cases a run would time (the quick grid, or the kernel grid of the selected suite)."""
    if args.quick:
        return configs.quick_cases(suite)
    return configs.kernel_cases(suite)


def main(argv=None) -> int:
    import pytest
    import torch

    args = parse_args(argv)
    published = report.RESULTS_DIR.resolve()
    if args.update_readme and args.out is not None and args.out.resolve() != published:
        print(f"--update-readme publishes into {report.RESULTS_DIR}; drop --out {args.out}", file=sys.stderr)
        return 2
    if args.out is None:
        args.out = report.RESULTS_DIR if args.update_readme else report.LOCAL_DIR
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = configs.Suite.make(gpu=args.gpu, smoke=args.smoke)
    if args.quick and (not args.gpu or args.smoke or args.only):
        print("--quick goes with --gpu alone (it is the GPU headline grid)", file=sys.stderr)
        return 2
    if args.dry_run:
        for case in dry_run_cases(args, suite):
            print(case.id)
        return 0
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs a CUDA device, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    start = time.perf_counter()
    load_start = os.getloadavg()[0]  # 1-minute load average: a busy machine makes every number unreliable
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "pytest-benchmark.json"
        code = pytest.main(pytest_args(args, json_path))
        if not json_path.exists():
            print(f"pytest exited with {code} and wrote no benchmark JSON", file=sys.stderr)
            return int(code) or 1
        raw = json.loads(json_path.read_text())
    meta = report.collect_meta(suite)
    meta["quick"] = bool(args.quick)
    results = report.build_results(raw, meta)
    results["meta"]["wall_s"] = time.perf_counter() - start
    results["meta"]["load_average"] = [load_start, os.getloadavg()[0]]
    results["meta"]["partial"] = bool(args.keyword or args.only)  # a subset never becomes the README's table
    results["meta"]["quick"] = bool(args.quick)
    results["meta"]["pytest_exit_code"] = int(code)
    results["meta"]["time_limit_s"] = args.time_limit or None
    planned = len(dry_run_cases(args, suite)) if args.quick else None
    results["meta"]["cases_planned"] = planned
    path = report.write_results(results, args.out)
    print()
    print(report.markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')} ({len(results['rows'])} rows, {results['meta']['wall_s']:.0f} s)")
    if args.update_readme:
        if args.smoke or results["meta"]["partial"]:
            print(f"{report.README} left alone: a smoke run or a subset (--only, -k) never becomes its table")
        elif report.update_readme(args.out):
            print(f"updated {report.README}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
