"""SplitMask: split, tokenizer, losses against plain formulas, ViT shapes, a short run, fine-tuning."""
import dataclasses
import math

import pytest
import torch

from sslaudit.losses import cross_info_nce_loss
from sslaudit.data import ImageData
from sslaudit.finetune import finetune_accuracy
from sslaudit.models import InputSpec, build_encoder
from sslaudit.nets.patch_tokenizer import PatchTokenizer, kmeans, normalise_patches, patchify
from sslaudit.tasks import DownstreamTask, stratified_index
from sslaudit.registry import get_victim, names
from sslaudit.train import TrainConfig
from sslaudit.victim import Victim
from sslaudit.victims.splitmask import (
    PRESETS, SplitMask, random_split, splitmask_loss, token_loss)
from sslaudit.nets.vit import TinyViT

CPU = torch.device("cpu")


def synthetic_images(n: int, seed: int = 0) -> ImageData:
    """Bright rectangles of 4 shapes on a dark, noisy background; the shape is the label."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=gen) * 0.2
    labels = torch.arange(n) % 4
    sizes = torch.tensor([[6, 20], [20, 6], [14, 14], [22, 22]])
    for i in range(n):
        h, w = sizes[labels[i]].tolist()
        top, left = (torch.randint(0, 29 - s, (1,), generator=gen).item() for s in (h, w))
        images[i, 0, top : top + h, left : left + w] += 0.7
    return ImageData(images.clamp(0, 1).mul(255).round().to(torch.uint8), labels, "synthetic")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_patches", [49, 16, 7])
def test_halves_are_disjoint_and_cover_all_patches(seed, num_patches):
    a, b = random_split(5, num_patches, torch.Generator().manual_seed(seed))
    assert a.shape == (5, num_patches // 2) and b.shape == (5, num_patches - num_patches // 2)
    for row_a, row_b in zip(a.tolist(), b.tolist()):
        assert not set(row_a) & set(row_b)
        assert sorted(row_a + row_b) == list(range(num_patches))
    assert not torch.equal(a[0], a[1])  # each image gets its own split


def test_tokenizer_is_deterministic_given_its_seed():
    images = synthetic_images(64).images

    def fit(seed: int) -> PatchTokenizer:
        return PatchTokenizer.fit(images, patch_size=4, vocab_size=32, iters=5, sample=2000, seed=seed)

    assert torch.equal(fit(0).centroids, fit(0).centroids)
    assert not torch.equal(fit(0).centroids, fit(1).centroids)


def test_tokenizer_assigns_each_patch_to_its_nearest_centroid():
    data = synthetic_images(32)
    tok = PatchTokenizer.fit(data.images, patch_size=4, vocab_size=16, iters=5, sample=1000, seed=0)
    images = data.as_float()[:6]
    ids = tok(images)
    assert ids.shape == (6, 49) and ids.dtype == torch.long
    for i in range(6):
        for p in range(49):
            r, c = divmod(p, 7)
            patch = images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].double().flatten()
            patch = (patch - patch.mean()) / math.sqrt(float(patch.var(unbiased=False)) + tok.eps)
            dist = [float((patch - centroid.double()).pow(2).sum()) for centroid in tok.centroids]
            assert dist[ids[i, p]] == pytest.approx(min(dist), abs=1e-4)


def test_kmeans_finds_well_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat(100, 1) + 0.1 * torch.randn(300, 2, generator=gen))
    found = kmeans(x, 3, 10, torch.Generator().manual_seed(0))
    assert torch.cdist(centres, found).min(1).values.max() < 0.1


def test_patchify_is_row_major_like_the_patch_embedding():
    images = torch.arange(2 * 28 * 28, dtype=torch.float).view(2, 1, 28, 28)
    patches = patchify(images, 4)
    assert patches.shape == (2, 49, 16)
    assert torch.equal(patches[1, 9], images[1, 0, 4:8, 8:12].flatten())
    assert normalise_patches(torch.ones(1, 1, 16), 0.01).abs().max() == 0  # a flat patch maps to zero


def reference_info_nce(xa, xb, tau):
    """½ Σ_dirs (1/N) Σ_i -log(exp(cos(u_i, v_i)/τ) / Σ_k exp(cos(u_i, v_k)/τ)), (u, v) = (a, b) and (b, a)."""
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    total = 0.0
    for u, v in ((xa, xb), (xb, xa)):
        for i in range(len(u)):
            denominator = sum(math.exp(cos(u[i], v[k]) / tau) for k in range(len(v)))
            total += -math.log(math.exp(cos(u[i], v[i]) / tau) / denominator) / len(u)
    return total / 2


def reference_token_ce(logits, targets):
    """Mean over all predicted positions of -log softmax(logits)[target]."""
    b, n, _ = logits.shape
    total = 0.0
    for i in range(b):
        for j in range(n):
            row = logits[i, j]
            total += -(float(row[targets[i, j]]) - math.log(sum(math.exp(float(v)) for v in row)))
    return total / (b * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_matches_formula(tau):
    torch.manual_seed(0)
    xa, xb = torch.randn(6, 5), torch.randn(6, 5)
    expected = reference_info_nce(xa.double(), xb.double(), tau)
    assert cross_info_nce_loss(xa, xb, tau).item() == pytest.approx(expected, rel=1e-5)


def test_token_loss_matches_formula():
    torch.manual_seed(1)
    logits, targets = torch.randn(3, 4, 7), torch.randint(0, 7, (3, 4))
    assert token_loss(logits, targets).item() == pytest.approx(reference_token_ce(logits.double(), targets), rel=1e-5)


def test_splitmask_loss_is_mean_mim_plus_weighted_nce():
    torch.manual_seed(2)
    lab, lba = torch.randn(4, 3, 9), torch.randn(4, 2, 9)
    ta, tb = torch.randint(0, 9, (4, 2)), torch.randint(0, 9, (4, 3))
    xa, xb = torch.randn(4, 8), torch.randn(4, 8)
    expected = 0.5 * (reference_token_ce(lab.double(), tb) + reference_token_ce(lba.double(), ta)) \
        + 0.7 * reference_info_nce(xa.double(), xb.double(), 0.2)
    got = splitmask_loss(lab, tb, lba, ta, xa, xb, temperature=0.2, nce_weight=0.7)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_tiny_vit_shapes_and_served_feature():
    torch.manual_seed(0)
    vit = TinyViT(in_channels=1, image_size=28).eval()
    x = torch.rand(3, 1, 28, 28)
    full = vit.encode(x)
    assert vit.num_patches == 49 and full.shape == (3, 49, vit.out_dim)
    assert torch.allclose(vit(x), full.mean(1), atol=1e-6)
    assert vit(torch.rand(2, 1, 32, 32)).shape == (2, vit.out_dim)  # other sizes are resized to 28 px
    a, b = random_split(3, 49, torch.Generator().manual_seed(0))
    assert vit.encode(x, a).shape == (3, 24, vit.out_dim) and vit.encode(x, b).shape == (3, 25, vit.out_dim)
    everything = torch.arange(49).expand(3, 49)
    assert torch.allclose(vit.encode(x, everything), full, atol=1e-5)
    # subset encoding sees only its own patches: changing a hidden patch leaves it unchanged
    y = x.clone()
    y[:, :, :4, :4] = 1 - y[:, :, :4, :4]  # patch 0
    keep = torch.arange(1, 49).expand(3, 48)
    assert torch.allclose(vit.encode(x, keep), vit.encode(y, keep), atol=1e-6)


def test_encoders_build_through_the_registry():
    encoder = build_encoder("vit-tiny", InputSpec())
    assert encoder(torch.rand(2, 1, 28, 28)).shape == (2, encoder.dim)
    assert "splitmask" in names("victim") and get_victim("splitmask") is SplitMask
    assert set(PRESETS) == {"tiny", "standard"}


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tmp_path):
    base = PRESETS["tiny"]
    config = dataclasses.replace(base, vocab_size=32, tokenizer_sample=5000, tokenizer_iters=5, decoder_dim=64,
                                 train=TrainConfig(epochs=3, batch_size=64, lr=1e-3, weight_decay=0.05,
                                                   optimizer="adamw", warmup_epochs=0.5))
    victim = SplitMask.train(synthetic_images(256), config, device=CPU, progress=False)
    loss = victim.card["history"]["loss"]
    assert loss[-1] < loss[0] and victim.card["method"] == "splitmask" and victim.card["arch"] == "vit-tiny"
    x = torch.rand(2, 1, 28, 28)
    assert victim.encoder(x).shape == (2, 192)
    loaded = Victim.load(victim.save(tmp_path / "splitmask"))  # served encoder round-trips
    assert torch.allclose(loaded.encoder(x), victim.encoder(x), atol=1e-6)


def test_finetune_runs_and_leaves_the_encoder_untouched():
    data = synthetic_images(160, seed=3)
    task = DownstreamTask("synthetic", data.subset(slice(0, 128)), data.subset(slice(128, None)),
                          stratified_index(data.labels[:128], 4))
    torch.manual_seed(0)
    encoder = build_encoder("vit-tiny", InputSpec())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    acc = finetune_accuracy(encoder, task, epochs=2, batch_size=32, device=CPU)
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    few = finetune_accuracy(encoder, task, epochs=1, few_label=True, device=CPU)
    assert 0.0 <= few <= 1.0
