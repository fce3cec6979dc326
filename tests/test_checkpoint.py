"""Checkpoints: atomic, verified, with a previous good copy; a corrupt or partial file is detected."""
import os

import pytest
import torch

from jafr_kernels.train import CheckpointError, TrainConfig, load_checkpoint, load_latest, save_checkpoint, train_model
from jafr_kernels.train.checkpoint import decode, encode


def _state(v):
    return {"model": {"w": torch.full((3, 4), float(v))}, "step": v, "rng": {"torch": torch.get_rng_state()}}


def test_round_trip_and_previous_copy(tmp_path):
    save_checkpoint(_state(1), str(tmp_path))
    save_checkpoint(_state(2), str(tmp_path))
    assert load_checkpoint(str(tmp_path / "last.pt"))["step"] == 2
    assert load_checkpoint(str(tmp_path / "prev.pt"))["step"] == 1
    assert torch.equal(load_checkpoint(str(tmp_path / "last.pt"))["model"]["w"], torch.full((3, 4), 2.0))
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "prev.pt"]  # no temporary files left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_damaged_checkpoint_is_detected_and_names_the_file(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1), str(tmp_path))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "empty":
        data = b""
    else:
        buf = __import__("io").BytesIO()
        torch.save(_state(1), buf)
        data = buf.getvalue()  # a plain torch.save file, not our format
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(str(path))


def test_load_latest_falls_back_to_the_previous_good_checkpoint(tmp_path):
    assert load_latest(str(tmp_path)) is None
    save_checkpoint(_state(1), str(tmp_path))
    save_checkpoint(_state(2), str(tmp_path))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:50])
    with pytest.warns(RuntimeWarning, match="last.pt is truncated"):
        state, path = load_latest(str(tmp_path))
    assert state["step"] == 1 and path.endswith("prev.pt")
    (tmp_path / "prev.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint"), pytest.warns(RuntimeWarning):
        load_latest(str(tmp_path))


def test_encode_decode_is_exact():
    state = _state(7)
    out = decode(encode(state))
    assert out["step"] == 7 and torch.equal(out["rng"]["torch"], state["rng"]["torch"])


def test_resume_from_a_corrupt_last_checkpoint_uses_prev(tmp_path):
    fm = __import__("jafr_kernels.train", fromlist=["load_dataset"]).load_dataset("fashion_mnist")
    kw = dict(method="standard", max_steps=6, batch_size=32, train_subset=256, progress=False, ckpt_every=2)
    full = train_model(TrainConfig(out_dir=str(tmp_path / "full"), **kw), train_set=fm)
    cut = str(tmp_path / "cut")
    train_model(TrainConfig(out_dir=cut, **dict(kw, max_steps=6)), train_set=fm)
    # pretend the run stopped after its step-4 checkpoint was written half-way
    state4 = load_checkpoint(os.path.join(cut, "prev.pt"))
    assert state4["step"] == 4
    save_checkpoint(state4, cut)  # last.pt: step 4, prev.pt: step 6 (about to be discarded below)
    data = open(os.path.join(cut, "last.pt"), "rb").read()
    os.replace(os.path.join(cut, "last.pt"), os.path.join(cut, "prev.pt"))  # prev.pt := step 4, good
    with open(os.path.join(cut, "last.pt"), "wb") as f:
        f.write(data[: len(data) // 3])  # last.pt := partial
    with pytest.warns(RuntimeWarning, match="truncated"):
        resumed = train_model(TrainConfig(out_dir=cut, resume=True, **kw), train_set=fm)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_every_checkpoint_opens_with_plain_torch_load(tmp_path):
    save_checkpoint(_state(1), str(tmp_path))
    save_checkpoint(_state(2), str(tmp_path))
    for name, step in (("last.pt", 2), ("prev.pt", 1)):
        for weights_only in (False, True):
            state = torch.load(str(tmp_path / name), weights_only=weights_only)
            assert state["step"] == step and torch.equal(state["model"]["w"], torch.full((3, 4), float(step)))


def test_a_corrupt_last_checkpoint_is_never_rotated_into_prev(tmp_path):
    save_checkpoint(_state(1), str(tmp_path))
    save_checkpoint(_state(2), str(tmp_path))
    last = tmp_path / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="does not verify"):
        save_checkpoint(_state(3), str(tmp_path))
    assert load_checkpoint(str(tmp_path / "prev.pt"))["step"] == 1  # the good one is kept
    assert load_checkpoint(str(last))["step"] == 3
    save_checkpoint(_state(4), str(tmp_path))  # a verified last.pt is rotated as usual
    assert load_checkpoint(str(tmp_path / "prev.pt"))["step"] == 3


class _Crash(Exception):
    pass


def _crash_after(model, forwards):
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1
        if calls["n"] > forwards:
            raise _Crash()

    model.register_forward_hook(hook)
    return model


def test_corrupt_last_then_resume_train_save_keeps_a_good_prev(tmp_path):
    """Acceptance: corrupt last.pt, resume (falls back to prev.pt), train, save: prev.pt is a good checkpoint
    afterwards, and every file opens with torch.load."""
    from jafr_kernels.train import build_model, load_dataset

    fm = load_dataset("fashion_mnist")
    kw = dict(method="standard", max_steps=8, batch_size=32, train_subset=512, progress=False, ckpt_every=2,
              out_dir=str(tmp_path))
    with pytest.raises(_Crash):  # stops during step 5: last.pt = step 4, prev.pt = step 2
        torch.manual_seed(0)
        train_model(TrainConfig(**kw), model=_crash_after(build_model("small_cnn", 1, 10), 4), train_set=fm)
    last = tmp_path / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    torch.manual_seed(0)
    model = _crash_after(build_model("small_cnn", 1, 10), 2)  # resume from step 2, save at step 4, stop in step 5
    with pytest.warns(RuntimeWarning, match="corrupt"), pytest.raises(_Crash):
        train_model(TrainConfig(resume=True, **kw), model=model, train_set=fm)
    prev = load_checkpoint(str(tmp_path / "prev.pt"))
    assert prev["step"] == 2 and all(torch.isfinite(v).all() for v in prev["model"].values() if v.is_floating_point())
    assert load_checkpoint(str(last))["step"] == 4
    for name in ("last.pt", "prev.pt"):
        assert torch.load(str(tmp_path / name), weights_only=False)["step"] in (2, 4)
