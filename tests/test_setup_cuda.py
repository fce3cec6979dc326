"""setup.py finds the real CUDA toolkit behind an nvcc wrapper script or symlink, falls back to the CPU path
with one warning line when there is none, and says what to do when torch is missing. Nothing is built."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_HOME = "/usr/local/cuda"
REAL_NVCC = os.path.join(REAL_HOME, "bin", "nvcc")


def _load_setup():
    spec = importlib.util.spec_from_file_location("jafr_setup_under_test", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the functions, builds nothing
    return module


@pytest.fixture
def setup_py(monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("JAFR_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.delenv("JAFR_FORCE_CUDA", raising=False)
    return _load_setup()


def _on_path(monkeypatch, folder):
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")


def _script(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


needs_toolkit = pytest.mark.skipif(not os.path.isfile(REAL_NVCC), reason=f"no CUDA toolkit at {REAL_HOME}")


@needs_toolkit
def test_wrapper_script_outside_the_toolkit_resolves_to_the_toolkit(tmp_path, monkeypatch, setup_py):
    """An nvcc wrapper in a folder without lib64/libcudart (as /usr/local/bin/nvcc or a venv's bin/) that execs
    the real nvcc: the root is the real toolkit, not the wrapper's parent (which fails at link: -lcudart)."""
    _script(tmp_path / "bin" / "nvcc", f'exec {REAL_NVCC} "$@"')
    _on_path(monkeypatch, tmp_path / "bin")
    home, why = setup_py.find_cuda_home()
    assert home is not None, why
    assert os.path.realpath(home) == os.path.realpath(REAL_HOME)
    assert setup_py.has_cudart(home) and not setup_py.has_cudart(str(tmp_path))


@needs_toolkit
def test_wrapper_named_by_cuda_home_resolves_too(tmp_path, monkeypatch, setup_py):
    _script(tmp_path / "bin" / "nvcc", f'exec {REAL_NVCC} "$@"')
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    home, why = setup_py.find_cuda_home()
    assert home is not None and os.path.realpath(home) == os.path.realpath(REAL_HOME), why


@needs_toolkit
def test_symlinked_nvcc_resolves_to_the_toolkit(tmp_path, monkeypatch, setup_py):
    (tmp_path / "bin").mkdir()
    os.symlink(REAL_NVCC, tmp_path / "bin" / "nvcc")
    _on_path(monkeypatch, tmp_path / "bin")
    home, why = setup_py.find_cuda_home()
    assert home is not None and os.path.realpath(home) == os.path.realpath(REAL_HOME), why


def test_nvcc_without_a_toolkit_builds_the_cpu_path_with_one_warning(tmp_path, monkeypatch, capsys, setup_py):
    fake = tmp_path / "bin" / "nvcc"
    _script(fake, "exit 1")  # says nothing about a toolkit
    _on_path(monkeypatch, tmp_path / "bin")
    home, why = setup_py.find_cuda_home()
    assert home is None and str(fake) in why and "CUDA_HOME" in why
    monkeypatch.setattr(setup_py, "_want_cuda", lambda torch: setup_py.find_cuda_home())  # also on a CPU-only torch
    (ext,) = setup_py.extensions()
    assert not any(s.endswith(".cu") for s in ext.sources)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"jafr_kernels: warning: building the CPU path only: {why}"]


def test_cuda_home_without_nvcc_is_no_toolkit(tmp_path, monkeypatch, setup_py):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    home, why = setup_py.find_cuda_home()
    assert home is None and f"CUDA_HOME={tmp_path}" in why


def test_missing_torch_says_to_install_it_and_use_no_build_isolation():
    """What pip's isolated build environment (no torch) runs: setup.py must say what to do, not just fail the import."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "No module named" not in res.stderr
    assert "--no-build-isolation" in res.stderr and "install torch" in res.stderr.lower()
