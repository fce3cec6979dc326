"""Device choice per process, with GPU availability faked: ``auto`` takes the GPU when one is visible, each
torchrun process takes ``cuda:LOCAL_RANK`` with NCCL, the CPU uses gloo, and impossible requests fail clearly."""
import pytest
import torch

from jafr_kernels.train import TrainConfig
from jafr_kernels.train.device import choose_device, dist_backend, world_from_env


@pytest.mark.parametrize("requested,local_rank,world,available,count,expected", [
    ("auto", 0, 1, False, 0, "cpu"),
    ("auto", 0, 1, True, 1, "cuda:0"),
    ("auto", 3, 4, True, 4, "cuda:3"),  # torchrun: one GPU per process
    ("auto", 1, 2, False, 0, "cpu"),  # torchrun on CPUs
    ("cuda", 2, 4, True, 8, "cuda:2"),
    ("cuda:5", 0, 1, True, 8, "cuda:5"),
    ("cpu", 1, 2, True, 2, "cpu"),  # CPU on a GPU machine, if asked
    ("CUDA", 0, 1, True, 1, "cuda:0"),
])
def test_choose_device(requested, local_rank, world, available, count, expected):
    device = choose_device(requested, local_rank=local_rank, world_size=world, cuda_available=available, cuda_count=count)
    assert device == torch.device(expected)


def test_process_group_backend_follows_the_device(monkeypatch):
    monkeypatch.delenv("JAFR_DIST_BACKEND", raising=False)
    assert dist_backend(torch.device("cuda", 1)) == "nccl"
    assert dist_backend(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("JAFR_DIST_BACKEND", "gloo")
    assert dist_backend(torch.device("cuda", 0)) == "gloo"


@pytest.mark.parametrize("requested,local_rank,world,available,count,message", [
    ("cuda", 0, 1, False, 0, "no CUDA GPU is visible"),
    ("cuda:1", 0, 1, True, 1, "only 1 GPU"),
    ("auto", 2, 4, True, 2, "LOCAL_RANK 2 of 4 processes needs cuda:2, but only 2 GPU"),
    ("gpu", 0, 1, True, 1, "must be auto, cpu, cuda or cuda:N"),
    ("cuda:x", 0, 1, True, 1, "must be auto, cpu, cuda or cuda:N"),
])
def test_impossible_devices_fail_with_a_message(requested, local_rank, world, available, count, message):
    with pytest.raises(ValueError, match=message):
        choose_device(requested, local_rank=local_rank, world_size=world, cuda_available=available, cuda_count=count)


def test_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_from_env() == (3, 1, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("auto", local_rank=1, world_size=4) == torch.device("cuda", 1)


def test_defaults_are_auto():
    import argparse

    from jafr_kernels.cli import build_parser

    assert TrainConfig().device == "auto"
    parser = build_parser()
    for argv in (["train"], ["study"], ["eval", "somewhere"]):
        assert parser.parse_args(argv).device == "auto"
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "study", "eval"):
        text = sub.choices[name].format_help()
        assert "auto" in text and "default" in text
