"""``jafr analyze`` and jafr_kernels.eval.analyze: any classifier (a torchvision model's state dict, a pickled
module, a jafr run) is loaded, adapted to the dataset's images, analysed and drawn."""
import json
import os

import pytest
import torch
from torch import nn

from jafr_kernels.cli import main
from jafr_kernels.eval import analyze as A
from jafr_kernels.eval.frequency import input_gradients, jacobian_spectrum

torchvision = pytest.importorskip("torchvision")


def _tiny_rgb(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))


def test_input_adapter_gives_the_gradient_of_the_stored_image():
    """J of a grey image fed to an RGB model is the sum of the model's three channel gradients (chain rule through
    the repetition), divided by std with a normalisation."""
    model = _tiny_rgb().double().eval()
    x, y = torch.rand(5, 1, 9, 7, dtype=torch.float64), torch.randint(0, 10, (5,))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    adapted = A.InputAdapter(model, repeat=3, mean=mean, std=std).double()
    xn = (x.repeat(1, 3, 1, 1) - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    g = input_gradients(model, xn, y) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(input_gradients(adapted, x, y), g.sum(dim=1, keepdim=True))


def test_adapt_input_repeats_grey_for_rgb_and_refuses_other_mismatches():
    model, note = A.adapt_input(_tiny_rgb(), 1)
    assert isinstance(model, A.InputAdapter) and model.repeat == 3 and "repeated" in note
    same, note = A.adapt_input(_tiny_rgb(), 3)
    assert not isinstance(same, A.InputAdapter) and note == ""
    grey = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="only 1-channel images are adapted"):
        A.adapt_input(grey, 3)


def test_load_state_dicts_of_a_torchvision_model(tmp_path):
    net = torchvision.models.resnet18(num_classes=10)
    plain, wrapped, other = tmp_path / "plain.pt", tmp_path / "wrapped.pt", tmp_path / "imagenet.pt"
    torch.save(net.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, wrapped)
    torch.save(torchvision.models.resnet18().state_dict(), other)  # 1000 classes
    for path in (plain, wrapped):
        model, what = A.load_model(str(path), arch="torchvision:resnet18")
        assert what == "torchvision:resnet18 with 10 classes" and not model.training
        for k, v in net.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    model, what = A.load_model(str(other), arch="torchvision:resnet18")
    assert what == "torchvision:resnet18" and model.fc.out_features == 1000
    with pytest.raises(ValueError, match="name its model with --arch"):
        A.load_model(str(plain))
    with pytest.raises(ValueError, match="does not fit --arch torchvision:resnet34"):
        A.load_model(str(plain), arch="torchvision:resnet34")
    with pytest.raises(ValueError, match="is not known"):
        A.load_model(str(plain), arch="resnet18")


def test_own_constructor_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_analyze.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=1000):\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 10))
    torch.save(net.state_dict(), tmp_path / "own.pt")
    model, what = A.load_model(str(tmp_path / "own.pt"), arch="my_models_for_analyze:build")
    assert what == "my_models_for_analyze:build with 10 classes" and model[2].weight.shape == (10, 72)


def test_pickled_model_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_tiny_rgb(), path)
    with pytest.raises(ValueError, match="--trust-pickle"):
        A.load_model(str(path))
    model, what = A.load_model(str(path), trust_pickle=True)
    assert isinstance(model, nn.Sequential) and "pickled Sequential" in what


def test_analyze_model_composes_the_frequency_analyses():
    model, _ = A.adapt_input(_tiny_rgb(), 1)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = A.analyze_model(model, x, y, cutoff=0.3, heat_map_images=2)
    assert out["jacobian"] == jacobian_spectrum(model, x, y, cutoff=0.3)  # the same function, not a copy
    assert len(out["heat_map"]["error"]) == 8 and out["heat_map"]["n"] == 2 and 0 <= out["clean"] <= 1
    assert "heat_map" not in A.analyze_model(model, x, y, heat_map_images=0)


def test_jafr_analyze_on_a_torchvision_resnet18_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    out = tmp_path / "analysis"
    assert main(["analyze", str(path), "--arch", "torchvision:resnet18", "--images", "6", "--heat-map-images", "2",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("analysing torchvision:resnet18 with 10 classes on 6 fashion_mnist test images")
    assert "repeated to the model's 3 input channels" in lines[0]
    assert lines[-2].startswith("clean accuracy ") and "J low-freq ratio" in lines[-2] and "Fourier heat map" in lines[-2]
    result = json.loads((out / "analysis.json").read_text())
    assert result["n"] == 6 and result["dataset"] == "fashion_mnist" and len(result["jacobian"]["spectrum"]) == 28
    for name in A.FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("args,words", [
    (["analyze", "{tmp}/nowhere.pt"], ["does not exist"]),
    (["analyze", "{sd}"], ["state dict", "--arch"]),
    (["analyze", "{sd}", "--arch", "torchvision:resnet18", "--mean", "0.5"], ["--mean and --std"]),
    (["analyze", "{sd}", "--arch", "torchvision:resnet18", "--images", "0"], ["--images must be"]),
    (["eval", "{sd}"], ["is not a run folder", "jafr analyze"]),
])
def test_analyze_mistakes_give_one_line(tmp_path, capsys, args, words):
    sd = tmp_path / "m.pt"
    torch.save(_tiny_rgb().state_dict(), sd)
    assert main([a.format(tmp=tmp_path, sd=sd) for a in args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not os.path.exists("runs/analyze/m")
