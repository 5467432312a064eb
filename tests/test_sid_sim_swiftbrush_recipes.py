"""SiD, SIM and SwiftBrush recipes end to end on tiny teachers: presets, the text-to-image path and
export, what each generator step may touch, SwiftBrush's two-network memory, resume.
(Convergence of each loss is tested on the exact 2-D teacher; digits quality is measured by the
recipes' own runs.)"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
import sid  # noqa: E402
import sim  # noqa: E402
import swiftbrush  # noqa: E402
from stepdistill import losses  # noqa: E402
from stepdistill.config import apply_overrides, load_config  # noqa: E402
from stepdistill.training import Draw  # noqa: E402

RECIPES = {"sid": (sid, sid.SiDConfig), "sim": (sim, sim.SIMConfig), "swiftbrush": (swiftbrush, swiftbrush.SwiftBrushConfig)}


def _cfg(name, teacher, out, *extra):
    return quick.config(name, teacher, out, *extra)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tiny_text_to_image_preset_trains_two_steps_and_exports(name, tmp_path, monkeypatch):
    """Latents through the VAE, cached CLIP embeddings, guidance; the export loads in stock diffusers
    and generates at one step."""
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    module, config = RECIPES[name]
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    module.main(load_config(config, ["--config", f"recipes/configs/{name}/tiny_t2i.yaml",
                                     f"train.output_dir={tmp_path / 'run'}"]))
    log = [json.loads(line) for line in (tmp_path / "run" / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1]
    assert all(torch.isfinite(torch.tensor(v)) for r in log for k, v in r.items() if k.startswith("loss"))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)  # one step: exact at any t_0 (stepdistill.export)
    image = pipe("a red square", num_inference_steps=1, guidance_scale=0.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def _networks(run) -> set[int]:
    """Distinct denoising networks reachable from a run's roles."""
    nets = {id(m.net) for m in (run.real_score, run.setup.unwrap(run.fake_score), run.setup.unwrap(run.generator).denoiser)}
    return nets


def test_swiftbrush_holds_exactly_two_denoising_networks(digits_like_teacher, tmp_path):
    run = swiftbrush.setup(_cfg("swiftbrush", digits_like_teacher, tmp_path, "model.lora_rank=4"))
    assert len(_networks(run)) == 2  # the generator, and the teacher whose LoRA is the fake score
    assert run.real_score.net is run.setup.unwrap(run.fake_score).net
    storages = {p.untyped_storage().data_ptr() for m in (run.real_score, run.setup.unwrap(run.fake_score), run.setup.unwrap(run.generator))
                for p in m.parameters()}
    teacher_params = sum(1 for n, _ in run.real_score.net.named_parameters() if "lora_" not in n)
    lora_params = sum(1 for n, _ in run.real_score.net.named_parameters() if "lora_" in n)
    assert len(storages) == 2 * teacher_params + lora_params
    trainable_fake = [n for n, p in run.setup.unwrap(run.fake_score).named_parameters() if p.requires_grad]
    assert trainable_fake and all("lora_" in n for n in trainable_fake)
    # Adapters off is exactly the teacher; on, the fake score (B = 0 at first, then trained).
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor([100.0, 700.0]), {"class_labels": torch.tensor([1, 2])}
    with torch.no_grad():
        for p in run.setup.unwrap(run.fake_score).parameters():
            if p.requires_grad:
                p.add_(0.1)
        real, fake = run.real_score(x, t, **cond), run.setup.unwrap(run.fake_score)(x, t, **cond)
    from stepdistill.teachers import load_teacher

    plain = load_teacher(digits_like_teacher).denoiser()
    torch.testing.assert_close(real, plain(x, t, **cond))
    assert float((fake - real).abs().max()) > 1e-3


@pytest.mark.parametrize("name,loss", [("sid", "sid_loss"), ("sim", "sim_loss")])
def test_step_trains_the_generator_through_frozen_networks(name, loss, digits_like_teacher, tmp_path, monkeypatch):
    """One step of recipes/sid.py and recipes/sim.py: their own loss gets predictions that carry gradient
    back to x_t through both networks' activations; the teacher never moves, the fake score moves only by its
    own denoising step (its weights take no gradient from the generator loss), the generator moves."""
    module, _ = RECIPES[name]
    run = module.setup(_cfg(name, digits_like_teacher, tmp_path))
    seen, original = {}, getattr(losses, loss)

    def spy(x, x0_real, x0_fake, *args, **kwargs):
        seen.update(real=x0_real.requires_grad, fake=x0_fake.requires_grad, x=x.requires_grad)
        return original(x, x0_real, x0_fake, *args, **kwargs)

    monkeypatch.setattr(losses, loss, spy)
    nets = (("gen", run.setup.unwrap(run.generator)), ("fake", run.setup.unwrap(run.fake_score)), ("real", run.real.denoiser))
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets}
    fake_grads = []
    run.opt_g.optimizer.register_step_pre_hook(lambda *a: fake_grads.extend(p.grad for p in run.setup.unwrap(run.fake_score).parameters()))
    logs = module.step(run, Draw(run.setup.accelerator, 4, 0, 0), 0)
    assert seen == {"real": True, "fake": True, "x": True} and {"loss_g", "loss_fake"} <= set(logs)
    moved = {k: any(not torch.equal(a, b.detach()) for a, b in zip(before[k], m.parameters())) for k, m in nets}
    assert moved == {"gen": True, "fake": True, "real": False}
    assert fake_grads and all(g is None for g in fake_grads)  # during the generator update


def test_sim_generator_loss_weightings():
    """SIM's loss in the recipe: the default c is iCT's 0.00054 sqrt(d); `loss.weighting=sid` weights each
    sample by SiD's detached 1 / mean|x - x0_real|, so its gradient is the unweighted one scaled per sample."""
    g = torch.Generator().manual_seed(0)
    x, r, f = (torch.randn(3, 1, 4, 4, generator=g, requires_grad=True) for _ in range(3))
    c = 0.00054 * 4
    plain = sim.make_generator_loss(sim.LossConfig())(x, r, f, None)
    torch.testing.assert_close(plain, losses.sim_loss(x, r, f, c))
    omega = (x - r).abs().flatten(1).mean(1).detach()
    weighted = sim.make_generator_loss(sim.LossConfig(weighting="sid"))(x, r, f, None)
    torch.testing.assert_close(weighted, losses.sim_loss(x, r, f, c, weight=1 / omega))
    gx_plain, = torch.autograd.grad(plain, x)
    gx_weighted, = torch.autograd.grad(weighted, x)
    torch.testing.assert_close(gx_weighted, gx_plain / omega.view(-1, 1, 1, 1))
    # The fixed-direction form: sg(u) . (x0_fake - x): the same gradient on x, none on the real score, and
    # on the fake score exactly u (per sample, over B).
    fixed = sim.make_generator_loss(sim.LossConfig(form="fixed_direction"))(x, r, f, None)
    gx, gr, gf = torch.autograd.grad(fixed, (x, r, f), allow_unused=True)
    y = (r - f).detach().flatten(1)
    u = (y / torch.sqrt(y.square().sum(1, keepdim=True) + c * c)).view_as(x)
    torch.testing.assert_close(gx, gx_plain)
    assert gr is None or float(gr.abs().max()) == 0
    torch.testing.assert_close(gf, u / 3)
    torch.testing.assert_close(fixed, (u * (f - x)).flatten(1).sum(1).mean())


def test_sid_resume_continues_with_identical_state(digits_like_teacher, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    sid.main(_cfg("sid", digits_like_teacher, straight, "train.max_steps=4", "train.checkpoint_every=2"))
    # Interrupted after its first step (a zero time limit), resumed with the same (cosine-decayed) config.
    # The cut says so: its learning-rate decay did not finish, and how many steps would fit.
    with pytest.warns(UserWarning, match=r"limit stopped training at step 1 of 4 .*resume=latest"):
        sid.main(_cfg("sid", digits_like_teacher, resumed, "train.max_steps=4", "train.checkpoint_every=2",
                      "train.time_limit_minutes=0"))
    sid.main(_cfg("sid", digits_like_teacher, resumed, "train.max_steps=4", "train.checkpoint_every=2",
                  "resume=latest"))
    steps = [json.loads(l).get("step") for l in (resumed / "log_rank0.jsonl").read_text().splitlines()]
    assert steps == [0, None, 1, 2, 3]  # None: the resume marker
    for a, b in (("model.safetensors", "model.safetensors"), ("model_1.safetensors", "model_1.safetensors")):
        wa = load_file(str(straight / "checkpoints" / "step_00000004" / a))
        wb = load_file(str(resumed / "checkpoints" / "step_00000004" / b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_only_a_decaying_schedule_warns_when_the_time_limit_cuts_it():
    """SwiftBrush's constant rate is meant to stop at its time limit; SiD's and SIM's cosines are not."""
    from stepdistill.training import decays
    assert decays(sid.SiDConfig().optim) and decays(sim.SIMConfig().optim)
    assert not decays(swiftbrush.SwiftBrushConfig().optim)
    assert not decays(apply_overrides(sid.SiDConfig(), ["optim.lr_schedule=constant"]).optim)


@pytest.mark.parametrize("name,override,match", [
    ("sid", "model.generator_timesteps=[999,499]", "one-step"),
    ("swiftbrush", "model.lora_rank=0", "LoRA"),
    ("sid", "data.prompt_dropout=1.5", "prompt_dropout"),
])
def test_bad_input_fails_before_any_step(name, override, match, digits_like_teacher, tmp_path):
    module, _ = RECIPES[name]
    with pytest.raises(ValueError, match=match):
        module.setup(_cfg(name, digits_like_teacher, tmp_path / "x", override))
    assert not (tmp_path / "x" / "checkpoints").exists()
