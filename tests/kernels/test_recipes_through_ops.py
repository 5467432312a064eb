"""The recipes' generator updates through `stepdistill.ops`: the fused Triton kernels (interpreted on
CPU) and the PyTorch references give the same loss and the same updated generator."""


import pytest
import torch

pytest.importorskip("diffusers", reason="the recipes need diffusers (absent on a bare GPU machine: eval/gpu_check.sh)")

from stepdistill import ops  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.training import Draw, accumulate, implicit  # noqa: E402

import dmd2  # noqa: E402
from stepdistill.training import dmd  # noqa: E402
import sid  # noqa: E402
import swiftbrush  # noqa: E402


def _dmd2_update(run, draw):
    with dmd.frozen_critics(run):
        logs, _ = accumulate(draw, lambda view: dmd.generator_loss(run, view, *dmd.samples(run, view, graph=True)))
        dmd.update_generator(run)
    return logs


def _sid_update(run, draw):
    def loss(view):
        z, labels = implicit.inputs(run, view)
        return implicit.generator_objective(run, view, implicit.generate(run, z, labels), labels,
                                            sid.generator_loss(run))

    logs, _ = accumulate(draw, loss)
    implicit.update_role(run, run.generator, run.opt_g, run.sched_g)
    return logs


# recipe -> (config, setup, one generator update returning its logs, the loss it logs)
RECIPES = {
    "dmd2": (dmd2.DMD2Config, dmd2.setup, _dmd2_update, "loss_dm"),
    "sid": (sid.SiDConfig, sid.setup, _sid_update, "loss_g"),
    "swiftbrush": (swiftbrush.SwiftBrushConfig, swiftbrush.setup, lambda run, draw: swiftbrush.step(run, draw, 0),
                   "loss_vsd"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_generator_update_is_the_same_with_triton_and_reference(device, name, digits_like_teacher, tmp_path):
    """One generator update from the same weights and draws: the logged loss and the generator's
    gradients (recorded as the optimiser steps) agree to float32 summation order."""
    config, setup, update, key = RECIPES[name]
    results = []
    for flag in (True, False):
        cfg = apply_overrides(config(), [f"model.teacher={digits_like_teacher}", f"train.output_dir={tmp_path / str(flag)}",
                                         "train.batch_size=4", "optim.warmup_steps=0", "eval.enabled=false"])
        run = setup(cfg)  # seeded: both runs start from the same weights
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a fake score that differs from the teacher, as after some training
            for p in run.setup.unwrap(run.fake_score).parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        grads, step = [], run.opt_g.step

        def recording_step(*args, **kwargs):
            grads.extend(p.grad.clone() for p in run.setup.unwrap(run.generator).parameters() if p.grad is not None)
            return step(*args, **kwargs)

        run.opt_g.step = recording_step
        with ops.use_triton(flag):
            logs = update(run, Draw(run.setup.accelerator, 4, 0, 0))
        results.append((logs[key], grads))
    (loss_t, grads_t), (loss_r, grads_r) = results
    assert loss_t == pytest.approx(loss_r, rel=1e-5, abs=1e-8)
    assert len(grads_t) == len(grads_r) > 0 and any(float(g.abs().max()) > 0 for g in grads_r)
    scale = max(float(g.abs().max()) for g in grads_r)
    for a, b in zip(grads_t, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
