"""Adversarial evaluation: the L-inf ball and the box, restarts never weaker, CW loss definition, exact FGSM
accuracy on a linear model, JSON-ready results, and the optional AutoAttack dependency."""
import json
import sys

import pytest
import torch
from torch import nn

from jafr_kernels.attacks import cw_margin_loss, fgsm, pgd
from jafr_kernels.eval.adversarial import autoattack_accuracy, eps_key, evaluate_adversarial, robust_correct


def small_cnn(seed=0, channels=1, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, classes),
    ).double().eval()


def data(n=48, channels=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, channels, 8, 8), generator=g, dtype=torch.float64)
    x[: n // 4] = (x[: n // 4] > 0.5).double()  # pixels exactly on the box edges
    return x


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("eps", [0.03, 0.2])
def test_pgd_stays_in_ball_and_box(loss, eps):
    model = small_cnn()
    x = data()
    y = model(x).argmax(1)
    for restarts in (1, 3):
        x_adv = pgd(model, x, y, eps, eps / 4, 6, restarts=restarts, loss=loss, generator=torch.Generator().manual_seed(0))
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert float((x_adv - x).abs().max()) <= eps * (1 + 1e-12)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    x_f = fgsm(model, x, y, eps)
    assert float((x_f - x).abs().max()) <= eps * (1 + 1e-12) and x_f.min() >= 0 and x_f.max() <= 1


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_restarts_never_weaker(loss):
    model = small_cnn(seed=2)
    x = data(64)
    y = model(x).argmax(1)
    one = robust_correct(model, x, y, 0.08, steps=3, restarts=1, loss=loss, generator=torch.Generator().manual_seed(5))
    many = robust_correct(model, x, y, 0.08, steps=3, restarts=4, loss=loss, generator=torch.Generator().manual_seed(5))
    assert not bool((many & ~one).any()), "an example robust under 4 restarts was broken by the first restart alone"
    assert int(many.sum()) <= int(one.sum())
    assert 0 < int(one.sum()) < 64, "test needs an attack that breaks some but not all examples"


def test_cw_margin_matches_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((20, 7), generator=g, dtype=torch.float64) * 40
    y = torch.randint(0, 7, (20,), generator=g)
    expected = []
    for z, t in zip(logits.tolist(), y.tolist()):
        other = max(v for j, v in enumerate(z) if j != t)
        expected.append(-max(z[t] - other + 50.0, 0.0))
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(cw_margin_loss(logits, y, reduction="none"), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(cw_margin_loss(logits, y), expected.mean(), rtol=0, atol=1e-12)
    assert (expected < 0).any() and (expected == 0).any()  # both branches of the relu are exercised


class Linear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_fgsm_and_pgd_accuracy_exact_on_a_linear_binary_model():
    """For two classes and no clamping, the worst L-inf perturbation lowers the margin by eps * ||w1 - w0||_1,
    and one signed gradient step of size >= eps (clipped) reaches it: accuracy is known in closed form."""
    g = torch.Generator().manual_seed(3)
    d = 36
    w = torch.randn((2, d), generator=g, dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    model = Linear(w, b)
    x = 0.3 + 0.4 * torch.rand((200, 1, 6, 6), generator=g, dtype=torch.float64)  # eps <= 0.1: never clamped
    y = torch.randint(0, 2, (200,), generator=g)
    margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, 1 - y[:, None])).squeeze(1)
    l1 = (w[1] - w[0]).abs().sum()
    eps_list = [0.01, 0.05, 0.1]
    res = evaluate_adversarial(model, x, y, eps_list, steps=8, restarts=2, batch_size=64, seed=0)  # 8 steps of eps/4 reach any corner
    json.dumps(res)
    assert res["clean"] == pytest.approx(float((margin > 0).double().mean()))
    for eps in eps_list:
        expected = float((margin > eps * l1).double().mean())
        assert res["fgsm"][eps_key(eps)] == pytest.approx(expected)
        assert res["pgd_ce"][eps_key(eps)] == pytest.approx(expected)
    assert res["fgsm"][eps_key(0.1)] < res["fgsm"][eps_key(0.01)] < res["clean"]


def test_evaluate_adversarial_dict():
    model = small_cnn(seed=4)
    x = data(30)
    y = model(x).argmax(1)
    res = evaluate_adversarial(model, x, y, [0.02, 0.1], steps=2, losses=("ce", "cw"), cw_eps=[0.1], fgsm_eps=[], seed=0, batch_size=16)
    assert json.loads(json.dumps(res)) == res
    assert res["n"] == 30 and res["clean"] == 1.0
    assert set(res["pgd_ce"]) == {eps_key(0.02), eps_key(0.1)} and set(res["pgd_cw"]) == {eps_key(0.1)}
    assert "fgsm" not in res
    for v in list(res["pgd_ce"].values()) + list(res["pgd_cw"].values()):
        assert 0.0 <= v <= 1.0
    again = evaluate_adversarial(model, x, y, [0.02, 0.1], steps=2, losses=("ce", "cw"), cw_eps=[0.1], fgsm_eps=[], seed=0, batch_size=16)
    assert again == res  # seeded random starts
    with pytest.raises(ValueError, match="losses"):
        evaluate_adversarial(model, x, y, [0.1], losses=("hinge",))


def test_autoattack_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # makes "import torchattacks" fail
    with pytest.raises(ImportError, match="pip install torchattacks"):
        autoattack_accuracy(small_cnn(), data(4), torch.zeros(4, dtype=torch.long), 0.1, n_classes=5)
