"""
Training throughput of the RBiM networks per set-up (issue: train rbim-resnet50 on a CPU).

For each model family and set-up, times forward + backward + AdamW on random
25 x 25 pixel 7-band batches after a warm-up, and prints samples/s:

- ``fp32``: float32, contiguous tensors;
- ``fp32-cl``: float32, channels-last network and inputs;
- ``bf16-cl``: `torch.autocast("cpu", dtype=torch.bfloat16)` and channels-last
  (what `astro_starglx.training` picks when the CPU has native bfloat16).

Run: ``python -m benchmarks.bench_training [--models rbim-lite rbim-resnet50]
[--batch 64] [--steps 5]``. It also prints whether this CPU has native
bfloat16 (``TrainConfig(precision="auto")`` follows it).
"""

import argparse
import time

import torch
from torch import nn

from astro_starglx.meta import MODEL_CONFIGS
from astro_starglx.model import build_model
from astro_starglx.inference import native_bf16

SETUPS = {
    "fp32": (torch.contiguous_format, False),
    "fp32-cl": (torch.channels_last, False),
    "bf16-cl": (torch.channels_last, True),
}


def samples_per_second(model, setup, *, batch, steps, size=25, n_bands=7, n_features=5):
    memory_format, bf16 = SETUPS[setup]
    config = dict(MODEL_CONFIGS[model], n_bands=n_bands, n_features=n_features, n_classes=2)
    torch.manual_seed(0)
    net = build_model(config).to(memory_format=memory_format).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, n_bands, size, size).contiguous(memory_format=memory_format)
    f = torch.randn(batch, n_bands, n_features)
    y = torch.randint(0, 2, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(x, f).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--models", nargs="+", default=["rbim-lite", "rbim-resnet50"])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16('cpu')}")
    print(f"{'model':16s} {'set-up':8s} {'samples/s':>10s}")
    for model in args.models:
        for setup in args.setups:
            rate = samples_per_second(model, setup, batch=args.batch, steps=args.steps)
            print(f"{model:16s} {setup:8s} {rate:10.1f}")


if __name__ == "__main__":
    main()
