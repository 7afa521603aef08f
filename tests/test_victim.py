import dataclasses

import pytest
import torch

from sslaudit.data import ImageData
from sslaudit.victim import Victim, config_key
from sslaudit.victims.simclr import PRESETS, SimCLR
from sslaudit.zoo import find_victim, shipped_path


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


def test_shipped_victim_matches_the_current_tiny_recipe():
    """Fails when the tiny preset changes without retraining the shipped victim."""
    path = shipped_path("simclr", "tiny")
    card = Victim.load(path).card
    assert card["config_key"] == config_key(PRESETS["tiny"]), (
        "the shipped tiny SimCLR victim was trained with another config; "
        "retrain it with `sslaudit victims train simclr --out sslaudit/weights/simclr-tiny`"
    )
    assert find_victim("simclr", "tiny") is not None
