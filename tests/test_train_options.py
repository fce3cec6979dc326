"""``jafr train`` and ``jafr study`` offer the TrainConfig fields through one generator: the same flags, help,
choices and parsing in both commands (the study leaves out the fields it sets per run)."""
import dataclasses
import typing

import pytest

from jafr_kernels.cli import build_parser
from jafr_kernels.eval.cli import _STUDY_SET, _train_config
from jafr_kernels.train.cli import HELP, config_from_args, option_flags
from jafr_kernels.train.loop import CHOICES, TrainConfig

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
STUDIED = [name for name in FIELDS if name not in _STUDY_SET]


def _subparser(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


def _actions(command) -> dict:
    """``{first flag: action}`` of a command's options."""
    return {a.option_strings[0]: a for a in _subparser(command)._actions if a.option_strings}


def _help(command) -> str:
    return _subparser(command).format_help()


def test_every_field_has_one_help_text():
    assert sorted(HELP) == sorted(FIELDS)


def test_both_commands_offer_each_field_the_same_way():
    train, study = _actions("train"), _actions("study")
    train_help, study_help = _help("train"), _help("study")
    for name in FIELDS:
        flag = option_flags(name)[0]
        assert flag in train and flag in train_help, f"jafr train has no {flag} ({name})"
        if name in _STUDY_SET:
            continue
        assert flag in study and flag in study_help, f"jafr study has no {flag} ({name})"
        a, b = train[flag], study[flag]
        assert (a.option_strings, a.dest, a.type, a.choices, a.nargs) == (b.option_strings, b.dest, b.type, b.choices, b.nargs), name
        assert a.help.startswith(HELP[name]) and b.help.startswith(HELP[name]), name


def _sample(name):
    """(argv, expected value) setting field ``name`` to something other than its default."""
    default = getattr(TrainConfig(), name)
    flag = option_flags(name)[0]
    hint = typing.get_type_hints(TrainConfig)[name]
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    if kind is bool:
        return ([flag] if not default else ["--no-" + flag[2:]]), not default
    if name in CHOICES:
        value = next(c for c in reversed(CHOICES[name]) if c != default)
    elif name == "dataset":
        value = "cifar10"
    else:
        value = {int: 3, float: 0.5, str: "somewhere"}[kind]
    return [flag, str(value)], value


@pytest.mark.parametrize("name", STUDIED)
def test_both_commands_parse_a_value_the_same_way(name):
    argv, value = _sample(name)
    trained = config_from_args(build_parser().parse_args(["train", *argv]))
    studied = _train_config(build_parser().parse_args(["study", *argv]))
    assert getattr(trained, name) == value and getattr(studied, name) == value


@pytest.mark.parametrize("name", sorted(_STUDY_SET))
def test_train_parses_the_fields_a_study_sets(name):
    argv, value = _sample(name)
    assert getattr(config_from_args(build_parser().parse_args(["train", *argv])), name) == value


@pytest.mark.parametrize("command", ["train", "study"])
def test_spellings_kept_from_the_hand_written_options(command):
    parse = build_parser().parse_args
    make = config_from_args if command == "train" else _train_config
    cfg = make(parse([command, "--update-bn-in-extra-passes", "--no-augment", "--max-steps", "all",
                      "--train-pgd-steps", "4"]))
    assert (cfg.freeze_bn, cfg.augment, cfg.max_steps, cfg.pgd_steps) == (False, False, None, 4)
    cfg = make(parse([command, "--bf16"]))
    assert cfg.bf16 and cfg.freeze_bn and cfg.augment


def test_train_keeps_its_aliases_and_study_its_defaults():
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["train", "--lambda", "0.3", "--out", "r", "--no-progress"]))
    assert (cfg.lam, cfg.out_dir, cfg.progress) == (0.3, "r", False)
    assert config_from_args(parse(["train"])) == TrainConfig()
    study = _train_config(parse(["study"]))
    assert (study.model, study.lr, study.jafr_every, study.jacobian_mode) == (None, 0.2, 1, "finite_difference")
    with pytest.raises(SystemExit):
        parse(["train", "--resume", "--overwrite"])
