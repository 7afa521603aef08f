"""The GPU path: standard presets train on CUDA with bf16 autocast, channels-last and data on the device,
with no host synchronisation in the step loop. Skipped where no CUDA device is present."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from sslaudit.data import ImageData
from sslaudit.device import autocast_dtype
from sslaudit.train import FINITE_CHECK_EVERY
from sslaudit.victims.simclr import PRESETS, SimCLR

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_images(n: int, size: int = 28) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    return ImageData(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 10, (n,), generator=gen), "random")


def test_the_standard_simclr_preset_trains_on_cuda_in_bf16_channels_last():
    assert autocast_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)
    config = PRESETS["standard"]
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, batch_size=64,
                                                                   warmup_epochs=0.5))
    torch.manual_seed(0)
    victim = SimCLR.train(random_images(256), config, progress=False, device=torch.device("cuda"))
    assert len(victim.card["history"]["loss"]) == 1 and victim.card["history"]["loss"][0] > 0


def test_no_host_sync_between_finite_checks():
    """CUDA's sync debug mode warns on every synchronising call; the loop may sync only at the finite-loss
    checks (every FINITE_CHECK_EVERY steps and at the epoch's end) and once per epoch for the history."""
    config = PRESETS["standard"]
    steps = FINITE_CHECK_EVERY - 1  # one epoch, shorter than a check interval: only the epoch's end syncs
    config = dataclasses.replace(config, arch="convnet", train=dataclasses.replace(
        config.train, epochs=1, batch_size=16, warmup_epochs=0.5))
    data = random_images(16 * steps)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SimCLR.train(data, config, progress=False, device=torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) < steps // 2, [str(w.message)[:120] for w in syncs[:5]]
