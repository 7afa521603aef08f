"""Bring-your-own encoders: each kind loads, safe weights only, clear refusals."""
import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from sslaudit.cli import main
from sslaudit.external import BadCheckpoint, load_external, read_weights
from sslaudit.models import InputSpec

NATIVE = InputSpec(channels=3, size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))

FACTORY = '''
import torch
from torch import nn

def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "byo_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("byo_models", None)
    import byo_models

    return byo_models


def trained_copy(module):
    torch.manual_seed(123)
    model = module.small()
    for p in model.parameters():
        p.data.normal_()
    return model


def reference_output(model, images):
    x = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    mean, std = torch.tensor(NATIVE.mean).view(1, 3, 1, 1), torch.tensor(NATIVE.std).view(1, 3, 1, 1)
    return model((x - mean) / std)


def test_factory_with_safetensors_weights_matches_the_model(factory_module, tmp_path):
    model = trained_copy(factory_module)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    victim = load_external("byo_models:small", weights=tmp_path / "w.safetensors", native=NATIVE)
    images = torch.rand(4, 1, 8, 8)  # smaller than native: upsampled; gray: replicated
    with torch.no_grad():
        assert torch.allclose(victim.encoder(images), reference_output(model, images), atol=1e-5)
    assert victim.encoder.dim == 8 and victim.card["native_input"]["size"] == 16


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_checkpoints_load_with_weights_only(factory_module, tmp_path, wrap):
    model = trained_copy(factory_module)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DataParallel prefix is stripped
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, tmp_path / "w.pt")
    victim = load_external("byo_models:small", weights=tmp_path / "w.pt", native=NATIVE)
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(victim.encoder(images), reference_output(model, images), atol=1e-5)


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_objects_and_garbage_are_refused(tmp_path, capsys):
    torch.save({"weights": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(BadCheckpoint, match="weights_only"):
        read_weights(tmp_path / "evil.pt")
    assert "pickle code ran" not in capsys.readouterr().out
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(BadCheckpoint, match="safetensors"):
        read_weights(tmp_path / "junk.safetensors")


def test_weights_that_do_not_fit_say_which_keys(factory_module, tmp_path):
    save_file({"other.weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(BadCheckpoint, match="does not fit.*other.weight"):
        load_external("byo_models:small", weights=tmp_path / "w.safetensors", native=NATIVE)
    state = trained_copy(factory_module).state_dict()
    save_file({**state, "0.weight": torch.zeros(8, 1, 3, 3)}, str(tmp_path / "w.safetensors"))
    shapes = r"tensor '0.weight' has shape \[8, 1, 3, 3\] in the file but \[8, 3, 3, 3\]"
    with pytest.raises(BadCheckpoint, match=shapes):
        load_external("byo_models:small", weights=tmp_path / "w.safetensors", native=NATIVE)


def test_torchscript_file(factory_module, tmp_path):
    model = trained_copy(factory_module).eval()
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    victim = load_external(str(tmp_path / "m.pt"), native=NATIVE)
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(victim.encoder(images), reference_output(model, images), atol=1e-5)


def test_a_plain_checkpoint_is_not_taken_for_torchscript(factory_module, tmp_path):
    torch.save(trained_copy(factory_module).state_dict(), tmp_path / "w.pt")
    with pytest.raises(BadCheckpoint, match="not a TorchScript"):
        load_external(str(tmp_path / "w.pt"), native=NATIVE)


def test_timm_and_torchvision_adapters(monkeypatch):
    calls = {}

    def create_model(name, pretrained, num_classes):
        calls["timm"] = (name, pretrained, num_classes)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(3, 1000)

        def forward(self, x):
            return self.fc(self.body(x))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=lambda name, weights: TinyNet())
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    assert load_external("timm:resnet18", native=NATIVE, random_weights=True).encoder.dim == 5
    assert calls["timm"] == ("resnet18", False, 0)  # no hub download, classifier removed
    assert load_external("torchvision:resnet18", native=NATIVE, random_weights=True).encoder.dim == 3  # fc removed


def test_missing_library_and_missing_input_say_what_to_do(monkeypatch, factory_module):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"sslaudit\[zoo\]"):
        load_external("timm:resnet18", native=NATIVE, random_weights=True)
    with pytest.raises(ValueError, match="--input-size"):
        load_external("byo_models:small", random_weights=True)
    with pytest.raises(ValueError, match="--weights, or pass --random-weights"):
        load_external("byo_models:small", native=NATIVE)  # never a random model by accident


def test_card_beside_the_weights_gives_the_input(factory_module, tmp_path):
    save_file(trained_copy(factory_module).state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text(json.dumps({"input": NATIVE.to_dict()}))
    assert load_external("byo_models:small", weights=tmp_path / "w.safetensors").card["native_input"]["size"] == 16


@pytest.mark.slow
def test_cli_steals_an_external_victim(needs_fmnist, factory_module, tmp_path):
    save_file(trained_copy(factory_module).state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, [
        "steal", "--victim", "byo_models:small", "--weights", str(tmp_path / "w.safetensors"),
        "--input-size", "16", "--channels", "3", "--mean", "0.4,0.5,0.6", "--std", "0.2,0.25,0.3",
        "--queries", "200", "--epochs", "1", "--eval-train", "1000", "--eval-test", "200", "--no-progress",
        "--stolen-arch", "convnet-small", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["queries"]["sent"] == 200 and report["victim"]["arch"] == "byo_models:small"
