"""The README states the code: its API table's signatures are the functions' own, its layout lists every
module of the package, and the extras it names exist in pyproject.toml."""
import inspect
import re
from pathlib import Path

import pytest
import torch

import jafr_kernels as jk

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _api_rows():
    """``(name, parameter text)`` of every ``jk.NAME(...)`` row of the API table."""
    rows = []
    for line in README.splitlines():
        m = re.match(r"\| `jk\.(\w+)\((.*?)\)`", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def _documented(params: str) -> dict:
    """``{name: default text or None}`` of a README parameter list (``*`` skipped)."""
    out = {}
    for part in re.split(r",\s*(?![^()]*\))", params):
        part = part.strip()
        if not part or part == "*":
            continue
        name, _, default = part.partition("=")
        out[name.strip()] = default.strip() or None
    return out


def test_api_table_lists_the_public_functions():
    names = {name for name, _ in _api_rows()}
    assert {"freq_penalty", "freq_penalty_and_grad", "low_freq_ratio", "spectral_energy", "radial_mask",
            "mean_magnitude"} <= names


@pytest.mark.parametrize("name,params", _api_rows(), ids=[n for n, _ in _api_rows()])
def test_api_table_signatures_match_the_code(name, params):
    sig = inspect.signature(getattr(jk, name))
    documented = _documented(params)
    assert list(documented) == list(sig.parameters), f"{name}: README lists {list(documented)}, code has {list(sig.parameters)}"
    for pname, p in sig.parameters.items():
        if p.default is inspect.Parameter.empty:
            assert documented[pname] is None, f"{name}({pname}) has no default, README gives {documented[pname]}"
            continue
        text = documented[pname]
        assert text is not None, f"{name}({pname}): README omits the default {p.default!r}"
        assert eval(text, {"torch": torch}) == p.default, f"{name}({pname}): README says {text}, code says {p.default!r}"


def test_layout_lists_every_module():
    layout = README.split("## Layout", 1)[1]
    for path in sorted((REPO / "jafr_kernels").rglob("*.py")):
        if path.name == "__init__.py" or path.parent.name in ("train", "eval"):
            continue  # the layers are listed as folders
        if path.name in ("__main__.py", "info.py", "cli.py"):
            continue
        assert path.name in layout, f"README's layout does not mention {path.relative_to(REPO)}"


def test_named_extras_exist():
    pyproject = (REPO / "pyproject.toml").read_text()
    extras = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]", 1)[1], re.M))
    for name in re.findall(r"jafr_kernels\[(\w+)\]", README + (REPO / "jafr_kernels/eval/adversarial.py").read_text()):
        assert name in extras, f"extra [{name}] is named but pyproject.toml defines {sorted(extras)}"
