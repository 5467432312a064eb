"""DMD2 training-step overhead: step time over the summed time of the network passes it cannot avoid.

    python experiments/dmd2_step_overhead/dmd2_step_overhead.py        # digits default config, ~2 CPU minutes
    python experiments/dmd2_step_overhead/dmd2_step_overhead.py --batch-size 32 --repeats 15

One "iteration" is a fake-score step followed by a generator step on the same draw (the recipe's
step at multiples of `update_ratio`). The unavoidable passes, each timed in isolation with the same
modules, batch and conditioning:
  fake-score step: G forward (no grad); fake score forward + backward; fake-score encoder forward +
                   backward on real and generated images (2B) + GAN head;
  generator step:  G forward + backward; real score forward (no grad; 2B with CFG); fake score
                   forward (no grad); fake-score encoder forward + backward to its input + head.
The ratio (1.0 is the limit) is what the recipe's orchestration costs on top: optimiser steps,
gradient clipping, random draws, noise, losses and logging. Results go to `results/dmd2_step_overhead.json`
beside this script and are merged into `eval/results/dmd2_digits.json` as `step_overhead_ratio` when that
file exists.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import dmd2  # noqa: E402
from stepdistill.networks import trainable  # noqa: E402
from stepdistill.training import Draw, dmd  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.io import atomic_write_text  # noqa: E402
from stepdistill.losses import denoising_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS = ROOT / "eval" / "results" / "dmd2_digits.json"  # the recipe's committed result, which quotes the ratio


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="DMD2 config overrides, e.g. loss.gan=false")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = apply_overrides(dmd2.DMD2Config(), [f"train.batch_size={args.batch_size}", f"train.output_dir={tmp}",
                                                  "eval.enabled=false", *args.overrides])
        run = dmd2.setup(cfg)
    B, shape, schedule, dev = args.batch_size, run.setup.shape, run.setup.schedule, run.setup.device
    labels = torch.arange(B, device=dev) % run.setup.conditioner.num_classes
    cond, uncond = run.setup.conditioner.cond(labels), run.setup.conditioner.uncond(labels)
    z, x0 = torch.randn(B, *shape, device=dev), torch.randn(B, *shape, device=dev)
    t = torch.full((B,), 500.0, device=dev)
    x_t = schedule.add_noise(x0, torch.randn_like(x0), t)
    fake, gen, head = run.setup.unwrap(run.fake_score), run.setup.unwrap(run.generator), run.setup.unwrap(run.head)
    cond2 = run.setup.conditioner.cond(torch.cat([labels, labels]))

    def zero():
        for p in list(fake.parameters()) + list(gen.parameters()) + (list(head.parameters()) if head else []):
            p.grad = None

    def g_forward_no_grad():
        with torch.no_grad():
            gen(z, **cond)

    def fake_forward_backward():
        denoising_loss(fake(x_t, t, **cond), x0).backward()
        zero()

    def discriminator_forward_backward():
        head(fake.features(torch.cat([x_t, x_t]), torch.cat([t, t]), **cond2)).sum().backward()
        zero()

    def g_forward_backward():
        gen(z, **cond).square().mean().backward()
        zero()

    def real_forward_no_grad():
        with torch.no_grad():
            run.real_guided(x_t, t, uncond=uncond, **cond)

    def fake_forward_no_grad():
        with torch.no_grad():
            fake(x_t, t, **cond)

    def gan_generator_forward_backward():
        x = x_t.clone().requires_grad_(True)
        with trainable(fake, False), trainable(head, False):
            head(fake.features(x, t, **cond)).sum().backward()
        zero()

    passes = {"g_forward_no_grad": g_forward_no_grad, "fake_forward_backward": fake_forward_backward,
              "g_forward_backward": g_forward_backward, "real_forward_no_grad": real_forward_no_grad,
              "fake_forward_no_grad": fake_forward_no_grad}
    if head is not None:
        passes |= {"discriminator_forward_backward": discriminator_forward_backward,
                   "gan_generator_forward_backward": gan_generator_forward_backward}
    pass_times = {name: median_time(fn, args.repeats) for name, fn in passes.items()}

    step = [0]

    def iteration():
        draw = Draw(run.setup.accelerator, B, cfg.train.seed, step[0])
        dmd.fake_score_step(run, draw, *dmd.samples(run, draw, graph=False))
        dmd.generator_step(run, draw, *dmd.samples(run, draw, graph=True))
        step[0] += 1

    iteration_time = median_time(iteration, args.repeats)
    unavoidable = sum(pass_times.values())
    result = dict(
        command="python " + " ".join(sys.argv), batch_size=B, repeats=args.repeats, device=str(dev),
        threads=torch.get_num_threads(), iteration_seconds=iteration_time, unavoidable_seconds=unavoidable,
        step_overhead_ratio=iteration_time / unavoidable, passes_seconds=pass_times,
        overrides=args.overrides,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "dmd2_step_overhead.json", json.dumps(result, indent=2) + "\n")
    digits = DIGITS
    if digits.exists() and not args.overrides:
        data = json.loads(digits.read_text())
        data["step_overhead_ratio"] = result["step_overhead_ratio"]
        data["step_overhead"] = {k: result[k] for k in ("command", "batch_size", "iteration_seconds",
                                                         "unavoidable_seconds", "passes_seconds")}
        atomic_write_text(digits, json.dumps(data, indent=2) + "\n")
    for name, sec in pass_times.items():
        print(f"{name:32s} {1e3 * sec:8.1f} ms")
    print(f"{'sum of unavoidable passes':32s} {1e3 * unavoidable:8.1f} ms")
    print(f"{'DMD2 iteration (fake + G step)':32s} {1e3 * iteration_time:8.1f} ms")
    print(f"step_overhead_ratio = {result['step_overhead_ratio']:.3f}")


if __name__ == "__main__":
    main()
