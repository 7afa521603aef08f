"""Bring-your-own encoders with the real timm and torchvision (not stubs): `./dev.sh test-zoo` runs these
in a second environment with torch 2.14.1 + torchvision 0.29.1 + timm; elsewhere they skip."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from safetensors.torch import save_file  # noqa: E402

from sslaudit.external import BadCheckpoint, load_external  # noqa: E402
from sslaudit.models import InputSpec  # noqa: E402

pytestmark = pytest.mark.zoo
NATIVE = InputSpec(3, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _reference(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the provider's own preprocessing would feed the model: resize, 3 channels, normalise."""
    x = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
    x = (x.expand(-1, 3, -1, -1) - torch.tensor(NATIVE.mean).view(1, 3, 1, 1)) / torch.tensor(NATIVE.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", ["resnet10t", "efficientnet_b0"])
def test_timm_model_with_safetensors_weights_serves_its_own_features(tmp_path, name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    victim = load_external(f"timm:{name}", weights=tmp_path / "w.safetensors", native=NATIVE)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        got = victim.encoder(images)
    torch.testing.assert_close(got, _reference(model, images), rtol=1e-4, atol=1e-4)
    assert victim.card["dim"] == model.num_features


def test_torchvision_model_with_safetensors_weights_serves_its_own_features(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None)
    model.fc = torch.nn.Identity()
    save_file(model.state_dict(), str(tmp_path / "r18.safetensors"))
    victim = load_external("torchvision:resnet18", weights=tmp_path / "r18.safetensors", native=NATIVE)
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        got = victim.encoder(images)
    torch.testing.assert_close(got, _reference(model, images), rtol=1e-4, atol=1e-4)
    assert got.shape == (3, 512)


def test_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    other = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(BadCheckpoint, match="does not fit torchvision:resnet18: tensor"):
        load_external("torchvision:resnet18", weights=tmp_path / "w.safetensors", native=NATIVE)


@pytest.mark.slow
def test_cli_steals_a_real_timm_model(needs_fmnist, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "sslaudit.cli", "steal", "--victim", "timm:resnet10t", "--weights",
           str(tmp_path / "w.safetensors"), "--input-size", "32", "--channels", "3", "--queries", "200", "--epochs", "1",
           "--eval-train", "1000", "--eval-test", "1000", "--no-progress", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["victim"]["arch"] == "timm:resnet10t" and result["queries"]["sent"] == 200
