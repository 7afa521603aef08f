import pytest
import torch

from sslaudit.augment import AugmentConfig, augment, color_jitter, random_resized_crop

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
def test_outputs_stay_in_unit_range_with_shape(channels):
    x = torch.rand(64, channels, 28, 28)
    y = augment(x, AugmentConfig(), gen())
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_full_crop_without_jitter_is_identity():
    x = torch.rand(8, 3, 32, 32)
    assert torch.allclose(augment(x, IDENTITY, gen()), x, atol=1e-5)


def test_flip_probability_one_mirrors():
    x = torch.rand(4, 1, 28, 28)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0)
    assert torch.allclose(random_resized_crop(x, cfg, gen()), x.flip(-1), atol=1e-5)


def test_parameters_differ_per_sample():
    x = torch.rand(1, 3, 32, 32).expand(16, -1, -1, -1).contiguous()
    y = augment(x, AugmentConfig(), gen())
    distinct = {tuple(v.flatten()[:50].tolist()) for v in y}
    assert len(distinct) == 16


def test_same_seed_same_views_other_seed_other_views():
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(augment(x, AugmentConfig(), gen(1)), augment(x, AugmentConfig(), gen(1)))
    assert not torch.equal(augment(x, AugmentConfig(), gen(1)), augment(x, AugmentConfig(), gen(2)))


def test_brightness_factor_within_range():
    x = torch.full((256, 1, 4, 4), 0.5)
    cfg = AugmentConfig(jitter_p=1.0, brightness=0.4, contrast=0.0)
    factors = color_jitter(x, cfg, gen())[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.std() > 0.1  # really random per sample


def test_crop_zooms_in():
    # a centred bright square grows when the crop covers only part of the image
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0)
    y = random_resized_crop(x, cfg, gen())
    assert y.mean() > x.mean()


def test_out_size_and_validation():
    assert augment(torch.rand(2, 1, 28, 28), AugmentConfig(out_size=20)).shape == (2, 1, 20, 20)
    with pytest.raises(TypeError, match="float"):
        augment(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), AugmentConfig())
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 1.5))
