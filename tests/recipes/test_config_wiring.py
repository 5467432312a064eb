"""Every config key is wired: for each registered recipe and each key of its `model`, `loss` and `optim` sections,
changing the key changes something observable in the first steps of a quick run: the recorded losses, the
trained weights, the built roles (parameter counts, gradient checkpointing), the optimisers' settings or the
student (its sampler spec: timesteps, steps, gamma, the exported scheduler's options).

A key that is read nowhere, or read and never passed on (a LoRA alpha dropped on its way to peft, a scaling that
reaches the export but not training), leaves the fingerprint unchanged and fails here. A key that only acts in a
setting other than the defaults is run in that setting (`CONTEXT`); one that only acts later than the first steps,
or only across processes, is listed in `LATER` with the test that pins it."""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path

import pytest
import torch

import quick
from registry import RECIPES
from stepdistill.config import apply_overrides
from stepdistill.training import Draw

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("model", "loss", "optim")
STEPS = 2
RUN = ("train.max_steps=4", "export.enabled=false", "train.batch_size=4")

# recipe.key -> the overrides in which the key acts (and its own first value where the default is off)
_REGRESSION = ("loss.regression_weight=0.5", "loss.regression_pairs=4", "loss.regression_nfe=2")
_DMD = {
    "loss.regression_weight": _REGRESSION[1:], "loss.regression_pairs": _REGRESSION, "loss.regression_sampler": _REGRESSION, "loss.regression_nfe": _REGRESSION,
    "loss.gan_generator_weight": ("loss.gan_balance=null",),  # the balance sets the GAN weight when it is given
    # the generator steps once in update_ratio steps: its warm-up shows within the first steps at ratio 1
    "optim.warmup_steps": ("optim.update_ratio=1",),
}
_EDM_FAKE_LOSS = ("loss.fake_weighting=edm",)  # EDM's lognormal levels, only in its weighting
_TEXT = ("model.teacher=tiny-sd", f"data.prompts={ROOT / 'assets' / 'prompts' / 'smoke.txt'}", "loss.w_min=3.5",
         "loss.w_max=3.5", "loss.states=teacher", "loss.trajectories=4", "train.batch_size=2")
CONTEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "dmd2": _DMD,
    "msd": {**_DMD, "optim.lr_tsm": ("model.tsm_steps=2", "model.student_width=0.5"),
            "model.student_width": ("model.tsm_steps=2",)},
    "consistency_distill": {
        "model.lora_alpha": ("model.lora_rank=4",), "model.lora_targets": ("model.lora_rank=4",),
        "model.sigma_min": ("model.boundary=cm",), "loss.huber_c": ("loss.metric=pseudo_huber",),
        "loss.states": ("loss.segments=[2]", "loss.trajectories=8"),
        "loss.trajectories": ("loss.segments=[2]", "loss.states=teacher", "loss.trajectories=8"),
        "loss.w_min": ("loss.w_max=3",),
        "loss.solver": ("model.teacher=digits-edm", "model.boundary=cm"),  # Heun steps are the EDM teachers'
        # the teacher's step to t = 0 acts on the boundary pair only: two levels draw it half the time
        "loss.solver_zero": ("loss.levels=2", "model.inference_steps=1"),
        "model.guidance_embedding_dim": _TEXT,  # w-conditioning: a UNet2DConditionModel's time_cond_proj_dim
    },
    # iCT's curriculum; fresh weights under another seed than the one that drew the tiny teacher's
    "ect": {"model.sigma_min": ("model.boundary=cm",), "loss.s0": ("loss.schedule=ict",),
            "loss.s1": ("loss.schedule=ict",), "model.init": ("train.seed=3",)},
    "sim": {"loss.c": ("loss.weighting=sid",), "loss.p_mean": _EDM_FAKE_LOSS, "loss.p_std": _EDM_FAKE_LOSS},
    "sid": {"loss.p_mean": _EDM_FAKE_LOSS, "loss.p_std": _EDM_FAKE_LOSS},
    "sfd": {"loss.p_mean": _EDM_FAKE_LOSS, "loss.p_std": _EDM_FAKE_LOSS},
}

# recipe.key -> the test that pins a key whose effect cannot show in the first steps of one process
LATER: dict[str, dict[str, str]] = {
    "ect": {"loss.s1": "tests/test_curricula.py::test_ict_discretisation_doubles_from_s0_to_s1"},  # reached late
    # the prompt form's keys act on a text-to-image teacher only
    "sfd": {k: f"tests/test_sfd_recipe.py::{t}" for k, t in (
        ("loss.forget_prompts", "test_the_prompt_form_maps_a_concepts_prompts_to_override_prompts"),
        ("loss.concept", "test_the_prompt_form_maps_a_concepts_prompts_to_override_prompts"),
        ("loss.override_concept", "test_the_prompt_form_maps_a_concepts_prompts_to_override_prompts"),
        ("loss.override_prompts", "test_override_prompts_map_line_by_line"))},
    "msd": {"model.parallel": "tests/test_msd_recipe.py::test_process_owned_students_train_as_one_process_training_them_in_turn",
            "model.partition": "tests/test_msd_recipe.py::test_text_students_export_as_one_pipeline_that_routes_prompts_without_stepdistill"},
}
SKIP = {"model.teacher"}  # what the run is distilled from: every test changes it


def _hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _candidates(tp, value) -> list[typing.Any]:
    """Other values of a key's type, nearest first."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        if value is None:
            return {int: [4, 8, 1], float: [0.5, 0.03, 2.0, 1e-3]}.get(inner, []) or _candidates(inner, None)
        return [None, *_candidates(inner, value)]
    if origin is typing.Literal:
        return [a for a in args if a != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value * 2, value + 1, 1, max(value // 2, 1)] if value else [1, 2]
    if tp is float:  # a large and a small change (a clipping threshold acts only below the gradients' norm)
        return [value * 2, value / 2, value * 1.1, value / 1000] if value else [0.5, 0.05]
    if origin is tuple:
        if args and args[-1] is Ellipsis and args[0] is str:
            return [tuple(value[:-1])]
        if args and args[-1] is Ellipsis:  # times or segment counts
            return [(*value, value[-1] // 2), (value[0] * 0.8,)] if args[0] is float else [(2,), (4, 2)]
        first = value[0] * 2 if value[0] else 0.5
        return [(min(first, 0.95), *value[1:]), (value[0], value[1] / 2)]
    return []


def _keys(name: str) -> list[str]:
    cfg = RECIPES[name].config_class()()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))
            if f"{s}.{f.name}" not in SKIP]


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, tuple):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _module_facts(obj, seen) -> list:
    """Parameter counts, trainable counts and gradient-checkpointing flags of every network a run holds."""
    facts = []
    values = ([getattr(obj, f.name) for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj)
              else list(obj) if isinstance(obj, (list, tuple)) else [obj])
    for v in values:
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, torch.nn.Module):
            facts.append((type(v).__name__, sum(p.numel() for p in v.parameters()),
                          sum(p.numel() for p in v.parameters() if p.requires_grad),
                          sum(bool(getattr(m, "gradient_checkpointing", False)) for m in v.modules())))
        elif isinstance(v, torch.optim.Optimizer):
            facts.append([{k: (tuple(x) if isinstance(x, tuple) else x) for k, x in g.items() if k != "params"}
                          for g in v.param_groups])
        elif isinstance(v, (list, tuple)) and v and (isinstance(v[0], (torch.nn.Module, torch.optim.Optimizer, tuple))
                                                     or dataclasses.is_dataclass(v[0])):
            facts.extend(_module_facts(v, seen))  # several students' runs, (optimiser, scheduler) pairs
        elif dataclasses.is_dataclass(v) and not isinstance(v, type) and hasattr(v, "generator"):
            facts.extend(_module_facts(v, seen))
    return facts


def _student_facts(student) -> dict:
    facts = {"weights": _digest(student.state_dict())}
    for attr in ("lora_adapter", "tags"):
        if hasattr(student, attr):
            facts[attr] = getattr(student, attr)
    spec = getattr(student, "sampler", None)
    if spec is not None:  # how it samples, and what the export's stock scheduler gets from it
        facts["sampler"] = spec.to_dict()
        facts["exported_times"] = spec.exported_times()
        try:
            facts["scheduler_options"] = repr(spec.scheduler_options())
        except ValueError as e:  # a student the stock schedulers cannot express: its reason is the fact
            facts["scheduler_options"] = str(e)
    return facts


def fingerprint(name: str, teacher: Path, out: Path, overrides: tuple[str, ...]) -> dict:
    """What a quick run observably is: the roles and optimisers it builds, its first steps' logs, its students."""
    info = RECIPES[name]
    module = info.module()
    cfg = quick.config(name, teacher, out, *RUN, *overrides)
    torch.manual_seed(0)
    run = module.setup(cfg)
    built = _module_facts(run, set())
    logs = []
    for step in range(STEPS):
        draw = Draw(run.setup.accelerator, cfg.train.batch_size, cfg.train.seed, step)
        logs.append({k: float(v) for k, v in module.step(run, draw, step).items()})
    after = _module_facts(run, set())  # the optimisers' rates after the steps: the schedules
    return {"built": repr(built), "logs": repr(logs), "after": repr(after),
            "students": repr([_student_facts(s) for s in module.students(run)])}


CASES = [(n, k) for n in sorted(RECIPES) for k in _keys(n)]


@pytest.fixture(scope="module")
def baselines():
    return {}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")  # "tiny-sd" is built here once


@pytest.mark.slow
@pytest.mark.parametrize("name,key", CASES, ids=[f"{n}:{k}" for n, k in CASES])
def test_changing_the_key_changes_what_the_run_does(name, key, tiny_teachers, baselines, tiny_cache, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tiny_cache))
    if key in LATER.get(name, {}):
        path, test = LATER[name][key].split("::")
        assert f"def {test}(" in (ROOT / path).read_text(), LATER[name][key]
        return
    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    context = CONTEXT.get(name, {}).get(key, ())
    if (name, context) not in baselines:
        baselines[name, context] = fingerprint(name, teacher, tmp_path / "base", context)
    base = baselines[name, context]
    section, field = key.split(".")
    cfg = apply_overrides(RECIPES[name].config_class()(), list(quick.overrides(teacher, tmp_path, *quick.SMALL.get(name, ()),
                                                                               *RUN, *context)))
    value = getattr(getattr(cfg, section), field)
    tp = _hints(type(getattr(cfg, section)))[field]
    tried = []
    for candidate in _candidates(tp, value):  # the first valid value that changes the run
        try:
            changed = fingerprint(name, teacher, tmp_path / f"changed{len(tried)}", (*context, f"{key}={_fmt(candidate)}"))
        except (ValueError, OSError) as e:  # not a valid setting here: the next candidate
            tried.append(f"{_fmt(candidate)} (refused: {e})")
            continue
        if changed != base:
            return
        tried.append(f"{_fmt(candidate)} (no change)")
    pytest.fail(f"{key}={_fmt(value)} is not wired: {tried}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_fingerprint_is_deterministic(name, tiny_teachers, tmp_path):
    """The comparison above is exact: the same settings must give the same fingerprint."""
    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    assert fingerprint(name, teacher, tmp_path / "a", ()) == fingerprint(name, teacher, tmp_path / "b", ())
