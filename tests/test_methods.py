"""The registry of methods: names, parsing of study specs, baselines, unused fields and the paper's claims."""
import dataclasses

import pytest

from jafr_kernels.train import TrainConfig
from jafr_kernels.train.loop import CHOICES
from jafr_kernels.train.methods import (
    DEFAULT_STUDY,
    METHOD_NAMES,
    RunSpec,
    claims,
    default_lambda,
    get_method,
    parse,
)


def test_parse_specs_and_labels():
    assert parse("standard") == RunSpec("standard") and parse("standard").label == "standard"
    assert parse("jafr") == RunSpec("jafr", "low") and parse("jafr").label == "jafr_low"
    assert parse("jafr:high").label == "jafr_high"
    assert parse("fgsm+jafr").label == "fgsm+jafr_low"
    assert parse("fgsm+jafr:high").label == "fgsm+jafr_high"
    assert parse("pgd+jafr:low").baseline == RunSpec("pgd")
    assert parse("gradalign").baseline is None
    for spec in ("jafr:high", "fgsm+jafr", "standard", "gradalign"):  # a label parses back to its spec
        assert parse(parse(spec).label) == parse(spec)
    assert str(parse("fgsm+jafr")) == "fgsm+jafr:low" and str(parse("fgsm")) == "fgsm"


def test_parse_rejects_bad_specs():
    with pytest.raises(ValueError, match="take a target"):
        parse("fgsm:high")
    with pytest.raises(ValueError, match="'low' or 'high'"):
        parse("jafr:middle")
    with pytest.raises(ValueError, match="method must be one of"):
        parse("mixup")


def test_registry_drives_the_training_loop():
    assert CHOICES["method"] == METHOD_NAMES
    for name in METHOD_NAMES:
        assert TrainConfig(method=name).resolved().method == name
        assert set(get_method(name).unused_fields) <= {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ValueError, match="method must be one of standard, jafr"):
        TrainConfig(method="jafr_low").resolved()
    assert TrainConfig(formulation="official").resolved().lam == default_lambda("official") == 0.001
    assert TrainConfig().resolved().lam == default_lambda("ratio") == 0.1
    m = get_method("gradalign")
    assert m.attack == "fgsm" and m.gradalign and not m.jafr and m.needs_double_backward
    assert "lam" in get_method("fgsm").unused_fields and "eps" not in get_method("fgsm").unused_fields
    assert "lam" not in get_method("pgd+jafr").unused_fields and "pgd_steps" not in get_method("pgd+jafr").unused_fields


def test_claims_of_the_default_study():
    rows = claims(DEFAULT_STUDY)
    assert len(rows) == 9  # three JaFR runs (low, high, FGSM + low) x three metrics
    by = {(c.label, c.metric): c for c in rows}
    assert by[("jafr_low", "corruption_high")].expected == +1
    assert by[("jafr_low", "corruption_low")].expected == -1
    assert by[("jafr_low", "pgd_claim")].expected == +1
    assert by[("jafr_high", "corruption_high")].expected == -1
    assert by[("jafr_high", "corruption_low")].expected == +1
    assert by[("jafr_high", "pgd_claim")].expected == -1
    assert by[("fgsm+jafr_low", "pgd_claim")].baseline == "fgsm"
    assert {c.baseline for c in rows} == {"standard", "fgsm"}


def test_claims_need_the_baseline_in_the_study():
    assert claims(["jafr:low", "fgsm+jafr"]) == []
    assert {c.label for c in claims(["pgd", "pgd+jafr:high", "jafr:low"])} == {"pgd+jafr_high"}
