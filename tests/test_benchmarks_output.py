"""``python -m benchmarks`` (``make bench``) writes its results outside git's view; tracked files
(``benchmarks/results/``, ``benchmarks/README.md``) change only with ``--update-readme``."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import __main__ as bench
from benchmarks import report

REPO = Path(__file__).resolve().parents[1]


def _ignored(path: Path) -> bool:
    res = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, capture_output=True)
    if res.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    return res.returncode == 0


def test_default_results_folder_is_ignored_by_git():
    assert _ignored(report.LOCAL_DIR / "cpu-20260101-000000-abcdef12.json")
    assert not _ignored(report.RESULTS_DIR / "cpu-20260101-000000-abcdef12.json")  # the published folder is tracked


def _run_main(monkeypatch, tmp_path, argv):
    """bench.main with pytest and the result writer stubbed: records where results go and whether the README changes."""
    calls = {"out": None, "readme": 0}

    def fake_pytest_main(args):
        json_path = Path(next(a for a in args if a.startswith("--benchmark-json=")).split("=", 1)[1])
        json_path.write_text('{"benchmarks": []}')
        return 0

    def fake_write(results, out_dir):
        calls["out"] = out_dir
        return tmp_path / "r.json"

    monkeypatch.setattr("pytest.main", fake_pytest_main)
    monkeypatch.setattr(report, "write_results", fake_write)
    monkeypatch.setattr(report, "markdown", lambda results, **k: "")
    monkeypatch.setattr(report, "update_readme", lambda *a, **k: calls.__setitem__("readme", calls["readme"] + 1) or True)
    code = bench.main(argv)
    return code, calls


def test_a_full_run_leaves_tracked_files_alone(monkeypatch, tmp_path):
    code, calls = _run_main(monkeypatch, tmp_path, [])
    assert code == 0 and calls["out"] == report.LOCAL_DIR and calls["readme"] == 0


def test_update_readme_publishes_into_the_results_folder(monkeypatch, tmp_path):
    code, calls = _run_main(monkeypatch, tmp_path, ["--update-readme"])
    assert code == 0 and calls["out"] == report.RESULTS_DIR and calls["readme"] == 1


def test_update_readme_refuses_another_folder(monkeypatch, tmp_path, capsys):
    code, calls = _run_main(monkeypatch, tmp_path, ["--update-readme", "--out", str(tmp_path)])
    assert code == 2 and calls["out"] is None and "--update-readme" in capsys.readouterr().err
