"""SFD: Score Forgetting Distillation (Chen, Zhang and Zhou 2025, ICLR, "Score Forgetting Distillation: A Swift,
Data-Free Method for Machine Unlearning in Diffusion Models"): distils and unlearns at once.

    accelerate launch recipes/sfd.py                                     # digits: forget 3 (becomes 8), 1 step
    accelerate launch recipes/sfd.py loss.forget=[3] loss.override=random
    accelerate launch recipes/sfd.py --config recipes/configs/sfd/cifar10.yaml model.teacher=FOLDER

Algorithm (official code `DDPM/runners/diffusion.py::train_sfd`, `DDPM/functions/losses.py`): SiD
(`recipes/sid.py`, the loop `stepdistill.training.implicit`) on a conditional teacher, each step's batch split
between two terms:
  - remain: rows with a retained condition c; G, the teacher and the fake score all see c (SiD as it is);
  - forget: rows with a forgotten condition c_f; G samples x = G(z, c_f), the fake score sees c_f, the teacher the
    override c_o (a fixed safe class or prompt, or a random retained class per row), so SiD's loss pulls G's
    samples for c_f onto the teacher's distribution for c_o (omega = mean|x0_teacher(c_o) - x|).
  1. fake score: denoising on sg(x) of both kinds of row, remain weighted `fake_remain_coef`, forget
     `fake_forget_coef` (the official sg_remain_coef / sg_forget_coef);
  2. generator: `remain_coef` x SiD(remain rows) + `forget_coef` x SiD(forget rows) (g_remain_coef / g_forget_coef),
     `losses.sfd_loss`, through both networks' activations as in SiD.
Half of each global batch is forgotten rows (the official loop draws equal numbers of each). The class form forgets
classes (`loss.forget`, `loss.override`); the prompt form forgets a concept's prompts (`loss.forget_prompts`), the
teacher seeing override prompts (`loss.override_prompts`, line by line, or the prompts with `loss.concept` replaced
by `loss.override_concept`, as the official SD code makes them), the retained rows drawing `data.prompts`.

The student is exported like SiD's; its model card states what it forgot and what it makes instead.
Bad input fails in `setup`, before any step; checkpoints are atomic and `--resume latest` continues.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Literal, Optional, Union

import torch

from stepdistill import losses
from stepdistill.conditioning import ClassConditioner, TextConditioner
from stepdistill.training import (EMBEDDED_MINUTES, DataConfig, Draw, RecipeConfig, TrainConfig, cli, implicit,
                                  run_recipe)
from stepdistill.training.implicit import ModelConfig, OptimConfig

NAME = "sfd"


@dataclass
class LossConfig(implicit.LossConfig):
    alpha: float = 1.2  # SiD Eq. 23 (the official CIFAR-10 config's 1.2)
    # The class form: the classes to forget, and what the teacher shows instead: one class per forgotten one, or
    # "random" (a retained class drawn per row, the official pseudo_label_type "rand"). On digits, 3 becomes 8.
    forget: tuple[int, ...] = (3,)
    override: Union[tuple[int, ...], Literal["random"]] = (8,)
    # The prompt form (a text-to-image teacher): a file of the concept's prompts, one a line, and the teacher's:
    # `override_prompts` (the same number of lines, line i for line i) or each prompt with `concept` replaced by
    # `override_concept` (case-insensitive). The class keys are then unused.
    forget_prompts: Optional[str] = None
    override_prompts: Optional[str] = None
    concept: Optional[str] = None
    override_concept: Optional[str] = None
    # Coefficients of the two terms (official g_remain_coef / g_forget_coef for the generator, sg_* for the fake
    # score). CIFAR-10 used 0.01 for both forget terms over 50k iterations; the SD runs 1.0 for all four. On digits'
    # 1,150 steps 1.0 (the forget term as strong as the remain one) forgets within the budget.
    remain_coef: float = 1.0
    forget_coef: float = 1.0
    fake_remain_coef: float = 1.0
    fake_forget_coef: float = 1.0


@dataclass
class SFDConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # SiD's digits budget: 1,150 steps, what 2 CPU cores complete in the 11.5-minute limit.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1150, output_dir="outputs/sfd_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))


__all__ = ["NAME", "SFDConfig", "LossConfig", "Forgetting", "setup", "generator_loss", "step", "students", "main"]


class Forgetting(implicit.Conditions):
    """SFD's conditions (`implicit.Conditions`): the odd rows of each global batch are forgotten (a forgotten label
    for G and the fake score, its override for the teacher), the even rows retained; each row weighs its term's
    coefficient over its term's share of the batch, so a mean over the batch is the official sum of two means."""

    def __init__(self, loss: LossConfig, batch: int, retained: torch.Tensor, forget: torch.Tensor,
                 override: Optional[torch.Tensor]):
        """`retained`, `forget`: labels; `override`: the teacher's label for each of `forget`, or None: a random
        retained label per row."""
        self.loss, self.retained, self.forget, self.override = loss, retained, forget, override
        self.batch, self.n_forget = batch, batch // 2

    def forgotten(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.isin(labels, self.forget.to(labels.device))

    def labels(self, run, draw: Draw) -> torch.Tensor:
        def rows():  # the global batch's labels: a retained one on even rows, a forgotten one on odd rows
            kept = self.retained[torch.randint(0, len(self.retained), (draw.batch,), generator=draw.g)]
            gone = self.forget[torch.randint(0, len(self.forget), (draw.batch,), generator=draw.g)]
            return torch.where(torch.arange(draw.batch) % 2 == 1, gone, kept)

        return draw.local(draw.sampled(rows))

    def teacher(self, draw: Draw, labels: torch.Tensor) -> torch.Tensor:
        if self.override is None:  # a retained label per row, drawn whatever the row
            instead = self.retained.to(labels.device)[draw.index(len(self.retained)).to(labels.device)]
        else:  # the override of each row's forgotten label
            which = (labels[:, None] == self.forget.to(labels.device)[None]).long().argmax(1)
            instead = self.override.to(labels.device)[which]
        return torch.where(self.forgotten(labels), instead, labels)

    def row_weights(self, labels: torch.Tensor, remain: float, forget: float) -> torch.Tensor:
        return torch.where(self.forgotten(labels), forget * self.batch / self.n_forget,
                           remain * self.batch / (self.batch - self.n_forget)).float()

    def fake_weight(self, labels: torch.Tensor) -> torch.Tensor:
        return self.row_weights(labels, self.loss.fake_remain_coef, self.loss.fake_forget_coef)

    def weighted(self, generator_loss, labels: torch.Tensor):
        return partial(generator_loss, weight=self.row_weights(labels, self.loss.remain_coef, self.loss.forget_coef))

    def record(self, conditioner) -> dict:
        """What the student forgot, for its model card (`Student.forgetting`)."""
        if isinstance(conditioner, TextConditioner):
            return dict(form="prompt", forget=[conditioner.text(int(i)) for i in self.forget],
                        override=[conditioner.text(int(i)) for i in self.override])
        return dict(form="class", forget=self.forget.tolist(),
                    override="random" if self.override is None else self.override.tolist())


@dataclass(kw_only=True)
class Run(implicit.Run):
    forgetting: Forgetting


def _lines(path: str, key: str) -> list[str]:
    if not Path(path).is_file():
        raise ValueError(f"{key}={path}: no such file")
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{key}={path} holds no prompt")
    return lines


def _prompt_form(loss: LossConfig, conditioner: TextConditioner) -> tuple[torch.Tensor, torch.Tensor]:
    """(forgotten labels, override labels) of the prompt form, appended to the conditioner's table."""
    if loss.forget_prompts is None:
        raise ValueError("sfd on a text-to-image teacher forgets prompts: set loss.forget_prompts (a file, one "
                         "prompt a line) and loss.override_prompts or loss.concept and loss.override_concept")
    forget = _lines(loss.forget_prompts, "loss.forget_prompts")
    if (loss.override_prompts is None) == (loss.concept is None or loss.override_concept is None):
        raise ValueError("loss.forget_prompts needs exactly one mapping to the teacher's prompts: "
                         "loss.override_prompts, or loss.concept with loss.override_concept")
    if loss.override_prompts is not None:
        override = _lines(loss.override_prompts, "loss.override_prompts")
        if len(override) != len(forget):
            raise ValueError(f"loss.override_prompts has {len(override)} prompts for loss.forget_prompts' "
                             f"{len(forget)}: they map line by line")
    else:
        pattern = re.compile(re.escape(loss.concept), re.IGNORECASE)
        missing = [p for p in forget if not pattern.search(p)]
        if missing:
            raise ValueError(f"loss.concept={loss.concept!r} is not in the forgotten prompt {missing[0]!r}")
        override = [pattern.sub(loss.override_concept, p) for p in forget]
    if set(forget) & set(override):
        raise ValueError(f"the override of a forgotten prompt is the same prompt: {sorted(set(forget) & set(override))[0]!r}")
    return conditioner.labels_for(forget), conditioner.labels_for(override)


def _class_form(loss: LossConfig, conditioner) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if not isinstance(conditioner, ClassConditioner):
        raise ValueError(f"sfd forgets conditions: it needs a class- or text-conditional teacher; this one is "
                         f"conditioned by {type(conditioner).__name__}")
    if loss.forget_prompts is not None:
        raise ValueError("loss.forget_prompts needs a text-to-image teacher (data.prompts); this one is "
                         "class-conditional: use loss.forget and loss.override")
    k = conditioner.num_classes
    named = [*loss.forget, *(() if loss.override == "random" else loss.override)]
    if not loss.forget or len(set(loss.forget)) != len(loss.forget):
        raise ValueError(f"loss.forget={list(loss.forget)} must name distinct classes, at least one")
    if any(not 0 <= c < k for c in named):
        raise ValueError(f"loss.forget / loss.override name a class outside 0..{k - 1}: {named}")
    if len(loss.forget) >= k:
        raise ValueError(f"loss.forget={list(loss.forget)} leaves no class to retain")
    if loss.override == "random":
        return torch.tensor(loss.forget), None
    if len(loss.override) != len(loss.forget):
        raise ValueError(f"loss.override={list(loss.override)} needs one class per forgotten class "
                         f"({list(loss.forget)}), or 'random'")
    if set(loss.override) & set(loss.forget):
        raise ValueError(f"loss.override={list(loss.override)} names a forgotten class ({list(loss.forget)}): "
                         "an override must be a retained class")
    return torch.tensor(loss.forget), torch.tensor(loss.override)


def setup(cfg: SFDConfig) -> Run:
    """SiD's trio (`implicit.setup`) and the forgetting: every error raised here, before any step."""
    loss = cfg.loss
    coefs = {f.name: getattr(loss, f.name) for f in fields(loss) if f.name.endswith("_coef")}
    if any(v < 0 for v in coefs.values()) or not (loss.remain_coef > 0 or loss.forget_coef > 0):
        raise ValueError(f"the SFD coefficients must be >= 0 and a generator term positive; got {coefs}")
    if cfg.train.batch_size < 2:
        raise ValueError(f"train.batch_size={cfg.train.batch_size}: sfd needs >= 2 (half retained, half forgotten)")
    run = implicit.setup(cfg)
    conditioner = run.setup.conditioner
    if isinstance(conditioner, TextConditioner):
        forget, override = _prompt_form(loss, conditioner)
        retained = torch.arange(conditioner.num_classes)  # data.prompts
    else:
        forget, override = _class_form(loss, conditioner)
        retained = torch.tensor([c for c in range(conditioner.num_classes) if c not in set(loss.forget)])
    forgetting = Forgetting(loss, cfg.train.batch_size, retained, forget, override)
    return Run(**{f.name: getattr(run, f.name) for f in fields(run)}, forgetting=forgetting)


def generator_loss(run: Run) -> implicit.GeneratorLoss:
    """SiD Eq. 23 per row, each row weighted by its term's coefficient (`Forgetting.weighted` binds `weight`)."""
    return lambda x, x0_real, x0_fake, t, weight: losses.sfd_loss(x, x0_real, x0_fake, weight, run.cfg.loss.alpha)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    # SiD's alternation on retained and forgotten rows: the teacher sees the override on the forgotten ones.
    return implicit.alternate(run, draw, generator_loss(run), run.forgetting)


def students(run: Run) -> list:
    student = implicit.student(run, NAME)
    student.forgetting = run.forgetting.record(run.setup.conditioner)
    return [student]


def plan_roles(cfg) -> list:
    """SiD's roles (`plan.implicit_roles`): SFD changes which labels the networks see, not the networks."""
    from stepdistill.training.plan import implicit_roles

    return implicit_roles(cfg)


def main(cfg: SFDConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], SFDConfig)
