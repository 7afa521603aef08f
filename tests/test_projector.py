"""Serving the projection head's output: the head survives save/load and the API serves its size."""
import pytest
import torch

from sslaudit.api import SimulatedAPI
from sslaudit.defenses.projector import ServeProjector
from sslaudit.models import InputSpec, build_encoder
from sslaudit.nets.heads import projection_mlp
from sslaudit.victim import BadCard, Victim


def _victim(with_head=True):
    torch.manual_seed(0)
    encoder = build_encoder("convnet", InputSpec())
    card = {"method": "m", "arch": "convnet", "input": InputSpec().to_dict()}
    head = None
    if with_head:
        head, card["head"] = projection_mlp([encoder.dim, 32, 16]).eval(), {"sizes": [encoder.dim, 32, 16]}
    return Victim(encoder.eval(), card, head)


def test_head_round_trips_through_save_and_load(tmp_path):
    victim = _victim()
    victim.save(tmp_path / "v")
    loaded = Victim.load(tmp_path / "v")
    x = torch.randn(5, victim.encoder.dim)
    assert torch.equal(loaded.head(x), victim.head(x))
    _victim(with_head=False).save(tmp_path / "plain")
    assert Victim.load(tmp_path / "plain").head is None


def test_head_file_without_sizes_in_the_card_is_a_one_line_error(tmp_path):
    victim = _victim()
    victim.card.pop("head")
    victim.save(tmp_path / "v")
    with pytest.raises(BadCard, match="no 'head'"):
        Victim.load(tmp_path / "v")


def test_api_serves_head_of_backbone_features_batch_independent():
    victim = _victim()
    api = SimulatedAPI(victim.encoder, defenses=[ServeProjector(head=victim.head)])
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    served = api.query(images, account="a")
    assert api.dim == 16 and served.shape == (7, 16) and served.dtype == torch.float32
    with torch.no_grad():
        expected = victim.head(victim.encoder(images))
    torch.testing.assert_close(served, expected, atol=2e-2, rtol=2e-2)  # the API may run bf16 autocast
    one = torch.cat([api.query(images[i:i + 1], account="a") for i in range(7)])
    torch.testing.assert_close(one, served, atol=1e-5, rtol=1e-5)  # eval-mode BN: no batch coupling


def test_projector_needs_a_module():
    with pytest.raises(ValueError, match="torch module"):
        ServeProjector(head=None)
