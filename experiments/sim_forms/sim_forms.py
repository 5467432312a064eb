"""SIM's two generator-loss forms on the exact 2-D teacher: the paper's on-policy form (`sim_loss`) and the
fixed-direction form (`sim_fixed_direction_loss`), each in SiD's loop for seeds 0-2, and the angle between
the two forms' generator gradients at the end of each run.

    python experiments/sim_forms/sim_forms.py                    # ~3 CPU minutes -> results/sim_forms_toy2d.json
    python experiments/sim_forms/sim_forms.py --digits [STEPS]   # default 550 steps, ~25 minutes on one thread
                                                                 # -> results/sim_forms_digits.json

Reported per form and seed: the sliced Wasserstein distance to the 8-mode mixture at the start and end,
the smallest mode's share, and the score divergence (E ||x0_real - x0_fake||^2, fake score re-fitted from
scratch) before and after. `--digits`: each form in the SIM recipe's default run on the digits teacher,
for the same fixed step count (no time limit), scored by the digits benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_toy2d_distillation import SID_LOOP, _through_both_networks  # noqa: E402
from toy2d_training import MIXTURE, SCHEDULE, GaussianMixtureDenoiser, score_divergence, train_toy_generator  # noqa: E402

from stepdistill.io import atomic_write_text  # noqa: E402
from stepdistill.losses import sim_fixed_direction_loss, sim_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sim_forms_toy2d.json"
FORMS = {"on_policy": sim_loss, "fixed_direction": sim_fixed_direction_loss}


def angle_degrees(generator, real, fake, seed: int) -> float:
    """The angle between the two forms' gradients on the generator's parameters, same draws."""
    grads = []
    for fn in FORMS.values():
        torch.manual_seed(seed)
        x = generator(torch.randn(256, 2))
        loss = _through_both_networks(fn)(x, real, fake)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(generator.parameters()))]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).clamp(-1, 1)
    return math.degrees(math.acos(float(cos)))


def digits(steps: int = 550) -> None:
    sys.path.insert(0, str(ROOT / "recipes"))
    import sim

    from stepdistill.config import apply_overrides

    rows = []
    for form in FORMS:
        cfg = apply_overrides(sim.SIMConfig(), [
            f"loss.form={form}", f"train.max_steps={steps}", "train.time_limit_minutes=null",
            f"train.output_dir=outputs/sim_forms/{form}", "train.overwrite=true", "eval.teacher_rows=none",
            "export.enabled=false"])
        row = sim.main(cfg)["rows"][0]
        rows.append(dict(form=form, steps=steps, **{k: row[k] for k in ("fd", "fd_std", "fd_per_seed", "precision",
                                                                          "recall", "accuracy")}))
        print(rows[-1], flush=True)
    teacher = json.loads((ROOT / "eval" / "results" / "teacher_digits.json").read_text())
    default = next(r for r in teacher["rows"] if r.get("default"))
    result = dict(command=f"python experiments/sim_forms/sim_forms.py --digits {steps}",
                  teacher_default_fd=default["fd"],
                  note="half the recipe's 1,100 default steps, the same for both forms, no time limit", rows=rows)
    atomic_write_text(RESULTS.with_name("sim_forms_digits.json"), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="?", const=550, metavar="STEPS",
                        help="each form in the SIM recipe's run on the digits teacher, for STEPS steps (default 550)")
    args = parser.parse_args(argv)
    if args.digits is not None:
        return digits(args.digits)
    rows = []
    for name, fn in FORMS.items():
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            r = train_toy_generator(_through_both_networks(fn), seed=seed, **SID_LOOP)
            rows.append(dict(form=name, seed=seed, sliced_wasserstein_start=r.start, sliced_wasserstein_end=r.end,
                             min_mode_share=float(r.modes.min()),
                             divergence_before=score_divergence(r.initial_generator),
                             divergence_after=score_divergence(r.generator)))
            print(rows[-1], flush=True)
            # the two forms' gradients at this run's end (its generator and fake score), same draws
            real = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
            r.fake.requires_grad_(False)
            rows[-1]["gradient_angle_between_forms_degrees"] = angle_degrees(r.generator, real, r.fake, seed)
    summary = {name: dict(mean_sliced_wasserstein_end=sum(r["sliced_wasserstein_end"] for r in rows if r["form"] == name) / 3,
                          converged=sum(r["sliced_wasserstein_end"] < 0.1 and r["min_mode_share"] > 0.06
                                        for r in rows if r["form"] == name))
               for name in FORMS}
    result = dict(command="python experiments/sim_forms/sim_forms.py", loop={k: str(v) for k, v in SID_LOOP.items()},
                  threshold="sliced Wasserstein < 0.1 and every mode >= 6%", summary=summary, rows=rows)
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
