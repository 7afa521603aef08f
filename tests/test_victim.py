import dataclasses

import pytest
import torch

from sslaudit.data import ImageData
from sslaudit.victim import Victim, config_key
from sslaudit.victims.simclr import PRESETS, SimCLR
from sslaudit import zoo
from sslaudit.zoo import preset_config, shipped_path


def tiny_data(n=128):
    low = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear").mul(255).to(torch.uint8)
    return ImageData(images, torch.zeros(n, dtype=torch.long), "synthetic")


QUICK = dataclasses.replace(
    PRESETS["tiny"], arch="convnet-small",
    train=dataclasses.replace(PRESETS["tiny"].train, epochs=3, batch_size=32, lr=0.1),
)


@pytest.fixture(scope="module")
def trained():
    return SimCLR.train(tiny_data(), QUICK, progress=False, device=torch.device("cpu"))


def test_short_simclr_run_lowers_the_loss(trained):
    loss = trained.card["history"]["loss"]
    assert loss[-1] < loss[0]


def test_card_records_provenance(trained):
    card = trained.card
    assert card["method"] == "simclr" and card["arch"] == "convnet-small"
    assert card["config_key"] == config_key(QUICK) and card["data"] == {"name": "synthetic", "images": 128}
    assert card["epochs"] == 3 and card["parameters"] > 0


def test_save_load_round_trip(tmp_path, trained):
    trained.save(tmp_path / "v")
    assert (tmp_path / "v.safetensors").is_file() and (tmp_path / "v.json").is_file()
    loaded = Victim.load(tmp_path / "v.safetensors")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded.encoder(x), trained.encoder(x))
    assert loaded.card == trained.card


def test_missing_victim_file_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected"):
        Victim.load(tmp_path / "nothing")


def test_config_key_changes_with_any_setting():
    other = dataclasses.replace(PRESETS["tiny"], temperature=0.3)
    assert config_key(PRESETS["tiny"]) != config_key(other)
    assert config_key(PRESETS["tiny"]) == config_key(dataclasses.replace(PRESETS["tiny"]))


@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "esvit", "splitmask"])
def test_shipped_victim_matches_the_current_tiny_recipe(method, monkeypatch, tmp_path):
    """Fails when a tiny preset changes without retraining its shipped victim (steal would then train)."""
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path))  # an empty user cache: only the shipped file counts
    card = Victim.load(shipped_path(method, "tiny")).card
    assert card["config_key"] == config_key(preset_config(method, "tiny")), (
        f"the shipped tiny {method} victim was trained with another config; "
        f"retrain it with `sslaudit victims train {method} --out sslaudit/weights/{method}-tiny`"
    )

    def no_training(*args, **kwargs):
        raise AssertionError(f"`steal --victim {method}` would train instead of loading the shipped victim")

    monkeypatch.setattr(zoo, "train_victim", no_training)
    victim = zoo.resolve_victim(method)
    assert victim.card["config_key"] == card["config_key"]
    assert victim.card["scores"], "the shipped card carries its probe scores"


def test_train_victim_refuses_epochs_beside_a_config(monkeypatch):
    """``epochs`` would be silently ignored next to a whole ``config``: refuse before any training."""
    from sslaudit.zoo import preset_config, train_victim

    def no_training_data():
        raise AssertionError("reached training")

    monkeypatch.setattr("sslaudit.zoo.victim_training_data", no_training_data)  # a regression fails at once
    with pytest.raises(ValueError, match="epochs or config"):
        train_victim("esvit", epochs=1, config=preset_config("esvit"))
