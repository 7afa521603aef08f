"""Worker for tests/test_distributed.py: one epoch (or two) of a tiny SimCLR victim, alone or under torchrun.

    python tests/workers/ddp_simclr.py OUT [--images N] [--epochs N] [--checkpoint PATH] [--stop-after-steps K]
    python -m torch.distributed.run --nproc_per_node 2 tests/workers/ddp_simclr.py OUT ...

Trains on the first N (192) Fashion-MNIST train images with a global batch of 64 (3 steps an epoch),
augmentation switched off (every view the image itself), so one process and two ranks see exactly the
same numbers and may differ only by floating-point summation order (which SimCLR's steps amplify: the
test compares one step, and resumes bit for bit). Rank 0 writes OUT (safetensors: the encoder and head weights and
buffers), OUT.init (the same before training) and OUT.json (the loss history). ``--stop-after-steps K`` raises KeyboardInterrupt at the K-th
step (an interrupted run, to be resumed from ``--checkpoint``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch
from safetensors.torch import save_file

import sslaudit.victims.simclr as simclr
from sslaudit.augment import AugmentConfig
from sslaudit.data import load_dataset
from sslaudit.distributed import is_main
from sslaudit.train import TrainConfig

NO_AUGMENT = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0)


def weights(encoder: torch.nn.Module, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = {f"encoder.{k}": v.detach().contiguous() for k, v in encoder.state_dict().items()}
    return tensors | {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--stop-after-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", "train")
    data = data.subset(slice(0, args.images), f"fashion-mnist:train[:{args.images}]")
    config = simclr.SimCLRConfig(arch="convnet-small", proj_hidden=64, proj_dim=32, augment=NO_AUGMENT,
                                 train=TrainConfig(epochs=args.epochs, batch_size=64, lr=0.01, warmup_epochs=0.5))
    if args.stop_after_steps:
        real, calls = simclr.simclr_loss, []

        def interrupted(*a, **k):  # the K-th step never finishes, as if the machine went away
            calls.append(1)
            if len(calls) == args.stop_after_steps:
                raise KeyboardInterrupt
            return real(*a, **k)

        simclr.simclr_loss = interrupted
    torch.manual_seed(0)  # the initial weights, as SimCLR.train builds them: the test measures updates from them
    encoder = simclr.build_encoder(config.arch, config.spec)
    head = simclr.ProjectionHead(encoder.dim, config.proj_hidden, config.proj_dim)
    if is_main():
        save_file(weights(encoder, head), args.out + ".init")
    torch.manual_seed(0)
    try:
        victim = simclr.SimCLR.train(data, config, progress=False, checkpoint=args.checkpoint)
    except KeyboardInterrupt:
        sys.exit(3)
    if is_main():
        save_file(weights(victim.encoder, victim.head), args.out)
        with open(args.out + ".json", "w") as fh:
            json.dump({"loss": victim.card["history"]["loss"], "config": dataclasses.asdict(config.train)}, fh)


if __name__ == "__main__":
    main()
