"""Consistency distillation (LCM-style, LCM-LoRA, MLCM) and consistency training (ECT, iCT) end to end on tiny
teachers: each step's wiring against the method's formula recomputed here from the same draws, the target
network's update, the replayed dropout, the teacher trajectories, the text-to-image presets and their export
(stock diffusers at 4 steps, the LCM-LoRA through `load_lora_weights`), one vs two processes, resume.
(Convergence is tested on the exact 2-D teacher; digits quality is measured by the recipes' own runs.)"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
import consistency_distill as cd  # noqa: E402
import ect  # noqa: E402
from stepdistill import losses  # noqa: E402
from stepdistill.config import apply_overrides, load_config  # noqa: E402
from stepdistill.training import Draw  # noqa: E402

COMMON = list(quick.OVERRIDES)


def _cd(teacher, out, *extra):
    return apply_overrides(cd.ConsistencyDistillConfig(), [f"model.teacher={teacher}", f"train.output_dir={out}",
                                                           *COMMON, *extra])


def _ect(teacher, out, *extra):
    return apply_overrides(ect.ECTConfig(), [f"model.teacher={teacher}", f"train.output_dir={out}", *COMMON, *extra])


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# one step against the formula


@pytest.mark.parametrize("metric", ["l2", "huber", "pseudo_huber"])
def test_distillation_step_is_lcm_s_loss_and_moves_the_ema_target(metric, digits_like_teacher, tmp_path):
    """The loss of step 0, recomputed from the same draws with a fresh teacher: the student (= the teacher at
    first) at (x, grid[i + 1]) with LCM's scalings, against the target at the teacher's DDIM step
    (x_prev, grid[i]), x_prev itself at the boundary; then the target is 0.95 target + 0.05 student."""
    from stepdistill.curricula import skip_grid
    from stepdistill.consistency import ConsistencyDenoiser
    from stepdistill.teachers import load_teacher
    from stepdistill.samplers import ddim_step

    run = cd.setup(_cd(digits_like_teacher, tmp_path, f"loss.metric={metric}", "train.batch_size=16"))
    s = run.setup
    target_before = _params(run.target)
    logs = cd.step(run, Draw(s.accelerator, 16, seed=0, step=0), 0)

    teacher = load_teacher(digits_like_teacher)
    den = teacher.denoiser()
    f = ConsistencyDenoiser(den, "lcm")
    grid = skip_grid(teacher.schedule, 50)
    d = Draw(s.accelerator, 16, seed=0, step=0)
    level = d.index(50)
    d.rand()  # w (0 here)
    images, labels = d.real(s.real.over(s.dataset))
    start, end = grid[level + 1], grid[level]
    x = teacher.schedule.add_noise(images, d.randn(1, 16, 16), start.float())
    cond = {"class_labels": labels}
    with torch.no_grad():
        x_prev = ddim_step(lambda a, b: den(a, b, **cond), teacher.schedule, x, start, end)
        online, target = f(x, start.float(), **cond), f(x_prev, end.float(), **cond)
    target = torch.where((level == 0).view(-1, 1, 1, 1), x_prev, target)
    expected = {"l2": lambda: losses.consistency_l2_loss(online, target),
                "huber": lambda: losses.lcm_huber_loss(online, target, 0.001),
                "pseudo_huber": lambda: losses.pseudo_huber_loss(online, target, 0.00054 * 16)}[metric]()
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-4)
    student = dict(s.unwrap(run.generator).named_parameters())
    for name, p in run.target.named_parameters():
        torch.testing.assert_close(p, 0.95 * target_before[name] + 0.05 * student[name].detach(), rtol=0, atol=1e-6)
    moved = max(float((student[n].detach() - target_before[n]).abs().max()) for n in target_before)
    assert moved > 0  # the student trained, the teacher did not
    for (n, p), q in zip(run.teacher.net.named_parameters(), teacher.net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_lora_student_s_ema_target_is_an_ema_copy_of_its_adapter(digits_like_teacher, tmp_path, monkeypatch):
    """`model.lora_rank` with `loss.target=ema`: the target is a frozen second adapter on the same network, starting
    as the student's and moving 5% of the way to it each step; the target pass runs it (not the online student)."""
    from stepdistill.adapters import adapter_names

    run = cd.setup(_cd(digits_like_teacher, tmp_path, "model.lora_rank=4", "model.lora_targets=[to_q,to_v]",
                       "optim.lr=0.05"))
    s, net = run.setup, run.setup.teacher.net
    assert run.target is not None and adapter_names(net) == {"student", "student_target"}

    def adapter(name):
        return {k.replace(f".{name}.", "."): p.detach().clone() for k, p in net.named_parameters() if f".{name}." in k}

    assert all(not p.requires_grad for k, p in net.named_parameters() if ".student_target." in k)
    assert all(torch.equal(adapter("student_target")[k], v) for k, v in adapter("student").items())
    called = []
    forward = run.target.forward
    monkeypatch.setattr(run.target, "forward", lambda *a, **kw: (called.append(1), forward(*a, **kw))[1])
    for k in range(2):
        before = adapter("student_target")
        cd.step(run, Draw(s.accelerator, 4, seed=0, step=k), k)
        student, target = adapter("student"), adapter("student_target")
        for name, value in target.items():
            torch.testing.assert_close(value, 0.95 * before[name] + 0.05 * student[name], rtol=0, atol=1e-7)
    assert called == [1, 1] and any(not torch.equal(student[k], target[k]) for k in student)


def test_ect_step_is_the_official_loss_with_shared_noise(digits_like_teacher, tmp_path, monkeypatch):
    """ECT's step 0 from the same draws: t ~ LogNormal(-1.1, 2), r = ect_r(t, stage 0), one noise for both,
    the network at (x + t eps, t) against itself at (x + r eps, r) (x where r reaches the boundary), the L2 norm
    per sample weighted 1 / (t - r); its gradient flows through the online pass only (theta^- = sg(theta))."""
    from stepdistill.curricula import ect_r
    from stepdistill.teachers import load_teacher

    run = ect.setup(_ect(digits_like_teacher, tmp_path, "train.batch_size=16"))
    s = run.setup
    grads = {}
    real_backward = s.accelerator.backward

    def capture(loss, **kwargs):
        params = [p for p in s.unwrap(run.generator).parameters() if p.requires_grad]
        grads["recipe"] = torch.autograd.grad(loss, params, retain_graph=True)
        return real_backward(loss, **kwargs)

    monkeypatch.setattr(s.accelerator, "backward", capture)
    logs = ect.step(run, Draw(s.accelerator, 16, seed=0, step=0), 0)

    teacher = load_teacher(digits_like_teacher)
    den, sched = teacher.denoiser(), teacher.schedule
    d = Draw(s.accelerator, 16, seed=0, step=0)
    images, labels = d.real(s.real.over(s.dataset))
    eps = d.randn(1, 16, 16)
    sigma_min = float(sched.ratio(torch.tensor(0.0, dtype=torch.float64)))
    sigma_t = torch.exp(-1.1 + 2.0 * d.randn()).clamp(sigma_min * 1.0001, 80.0)
    sigma_r = ect_r(sigma_t, 0)
    clean = sigma_r <= sigma_min
    t = sched.t_from_ratio(sigma_t.double()).float()
    r = sched.t_from_ratio(torch.where(clean, sigma_t, sigma_r).double()).float()
    cond = {"class_labels": labels}
    teacher.net.requires_grad_(True)
    online = den(sched.add_noise(images, eps, t), t, **cond)
    with torch.no_grad():
        target = den(sched.add_noise(images, eps, r), r, **cond)
    target = torch.where(clean.view(-1, 1, 1, 1), images, target)
    weight = 1 / (sigma_t.double() - torch.where(clean, torch.zeros_like(sigma_r), sigma_r).double()).float()
    loss = (weight * (online - target).flatten(1).norm(dim=1)).mean()
    assert logs["loss"] == pytest.approx(float(loss.detach()), rel=1e-4)
    expected = torch.autograd.grad(loss, list(teacher.net.parameters()))
    assert len(expected) == len(grads["recipe"])
    for got, want in zip(grads["recipe"], expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


def test_the_target_pass_replays_the_online_pass_dropout(digits_like_teacher):
    """iCT / ECT: at equal inputs the online and target passes of a network with dropout agree exactly when
    the target replays the online pass's random stream, and differ without it."""
    from stepdistill.networks import replayed_rng, rng_state, set_dropout
    from stepdistill.teachers import load_teacher

    net = load_teacher(digits_like_teacher).net.train()
    set_dropout(net, 0.5)
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 2])
    state = rng_state("cpu")
    online = net(x, t, class_labels=y).sample
    with torch.no_grad(), replayed_rng(state, "cpu"):
        replayed = net(x, t, class_labels=y).sample
    after = torch.get_rng_state()
    with torch.no_grad():
        fresh = net(x, t, class_labels=y).sample
    torch.testing.assert_close(online.detach(), replayed, rtol=0, atol=0)
    assert not torch.allclose(online.detach(), fresh)
    assert not torch.equal(after, state[0])  # the stream continued past the replay, not rewound
    with pytest.raises(ValueError, match="dropout"):
        set_dropout(net, 1.0)


def test_ict_curriculum_weights_and_boundary(digits_like_teacher, tmp_path):
    """iCT from scratch: fresh weights (not the teacher's), N(k) levels from the curriculum, pairs of
    neighbouring levels, lambda = 1 / (sigma_{i+1} - sigma_i), the LCM boundary exact at t = 0."""
    from stepdistill.teachers import load_teacher

    run = ect.setup(_ect(digits_like_teacher, tmp_path, "model.init=scratch", "loss.schedule=ict",
                         "model.boundary=lcm", "loss.huber_c=null", "train.max_steps=100",
                         "train.seed=3"))  # seed 0 would redraw the tiny teacher's own initial weights
    teacher = load_teacher(digits_like_teacher)
    student = run.setup.unwrap(run.generator)
    differs = [not torch.equal(p, q) for p, q in zip(student.denoiser.net.parameters(), teacher.net.parameters())]
    assert sum(differs) > len(differs) // 2
    sigma_t, sigma_r, weight = ect.levels(run, Draw(run.setup.accelerator, 64, 0, 0), 0)
    assert bool((sigma_t > sigma_r).all())
    torch.testing.assert_close(weight, 1 / (sigma_t - torch.where(sigma_r == 0, torch.full_like(sigma_r, run.sigma_min),
                                                                     sigma_r)), rtol=1e-4, atol=0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(student(x, torch.zeros(2), class_labels=torch.tensor([1, 2])), x)


def test_trajectories_are_the_teachers_ddim_steps_and_are_reused(digits_like_teacher, tmp_path):
    from accelerate import Accelerator

    from stepdistill.conditioning import ClassConditioner
    from stepdistill.curricula import skip_grid
    from stepdistill.data.trajectories import make_trajectories
    from stepdistill.guidance import CFGDenoiser
    from stepdistill.teachers import load_teacher
    from stepdistill.samplers import ddim_step

    teacher = load_teacher(digits_like_teacher)
    den, cond = CFGDenoiser(teacher.denoiser(), 1.0), ClassConditioner.for_embeddings(11)
    grid = skip_grid(teacher.schedule, 5)
    cache = tmp_path / "traj.safetensors"
    kw = dict(n=3, seed=1, accelerator=Accelerator(cpu=True), cache=cache)
    traj = make_trajectories(den, ddim_step, teacher.schedule, cond, (1, 16, 16), grid, **kw)
    assert traj.states.shape == (3, 6, 1, 16, 16)
    with torch.no_grad():
        for i in (0, 3):
            x = traj.states[:, i + 1]
            step = ddim_step(lambda a, b: den(a, b, class_labels=traj.labels), teacher.schedule, x,
                             grid[i + 1].expand(3), grid[i].expand(3))
            torch.testing.assert_close(traj.states[:, i], step, rtol=0, atol=1e-6)
    x, x_prev = traj.pair(torch.tensor([2, 0]), torch.tensor([1, 4]))
    assert torch.equal(x[0], traj.states[2, 2]) and torch.equal(x_prev[1], traj.states[0, 4])
    stamp = cache.stat().st_mtime_ns
    again = make_trajectories(den, ddim_step, teacher.schedule, cond, (1, 16, 16), grid, **kw)
    assert cache.stat().st_mtime_ns == stamp and torch.equal(again.states, traj.states)


def test_mlcm_trains_towards_fewer_segments_on_teacher_states(digits_like_teacher, tmp_path):
    """Progressive segments (4, then 2) over the run; no real image is read (the dataset is never touched)."""
    cfg = _cd(digits_like_teacher, tmp_path, "loss.segments=[4,2]", "loss.states=teacher", "loss.trajectories=8",
              "train.max_steps=4", "train.checkpoint_every=4")
    run = cd.setup(cfg)
    assert cd.segments_at(cfg, 0, 4) == 4 and cd.segments_at(cfg, 1, 4) == 4 and cd.segments_at(cfg, 2, 4) == 2
    run.setup.dataset = None  # a real image read would fail now
    logs = [cd.step(run, Draw(run.setup.accelerator, 4, 0, k), k) for k in range(4)]
    assert [r["segments"] for r in logs] == [4, 4, 2, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)


# ---------------------------------------------------------------------------------------------------------------
# sampling in any number of steps, export


def test_the_exported_scheduler_picks_the_steps_the_student_samples(digits_like_teacher, tmp_path):
    """A consistency student holds its 50-level grid; `steps=K` and LCMScheduler's num_inference_steps=K (with
    the exported original_inference_steps and LCM's timestep scaling) pick the same K times."""
    from diffusers import LCMScheduler

    from stepdistill.export.schedulers import lcm_scheduler as _lcm_scheduler
    from stepdistill.sampler_spec import strided as student_timesteps

    run = cd.setup(_cd(digits_like_teacher, tmp_path))
    student = cd.students(run)[0]
    options = student.sampler.scheduler_options()
    assert options == {"timestep_scaling": 10.0, "original_inference_steps": 50}
    scheduler = _lcm_scheduler(run.setup.teacher.scheduler_config, **options)
    assert isinstance(scheduler, LCMScheduler)
    for k in (1, 2, 4, 8):
        scheduler.set_timesteps(k)
        assert scheduler.timesteps.tolist() == [int(t) for t in student_timesteps(student.timesteps, k)], k
    assert student.nfe == 4 and [int(t) for t in student.default_timesteps] == [999, 759, 499, 259]


def test_exported_consistency_student_samples_as_the_student_in_any_steps(digits_like_teacher, tmp_path):
    """The exported class-conditional pipeline, at num_inference_steps=2, is the student's own 2-step sampling
    (LCM's boundary scaling 10; x0 unclipped between steps, as the Student samples)."""
    from diffusers import DiffusionPipeline

    from stepdistill.consistency import lcm_scalings

    out = tmp_path / "run"
    cd.main(_cd(digits_like_teacher, out, "train.max_steps=2", "train.checkpoint_every=2"))
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", trust_remote_code=True)
    images = pipe(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    default = pipe(class_labels=[3, 7], generator=torch.Generator().manual_seed(0), output_type="pt").images
    four = pipe(class_labels=[3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                output_type="pt").images
    torch.testing.assert_close(default, four, rtol=0, atol=0)  # the default is the student's 4 steps

    from stepdistill.teachers import load_teacher

    teacher = load_teacher(digits_like_teacher)
    weights = load_file(str(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    teacher.net.load_state_dict(weights)
    den, sched = teacher.denoiser(), teacher.schedule
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g) * float(sched.sigma(torch.tensor(999.0)))
    y = {"class_labels": torch.tensor([3, 7])}
    with torch.no_grad():
        for t, nxt in ((999.0, 499.0), (499.0, None)):
            c_skip, c_out = lcm_scalings(torch.tensor(t))
            x0 = c_skip * x + c_out * den(x, torch.tensor(t), **y)
            x = x0 if nxt is None else (sched.alpha(torch.tensor(nxt)) * x0
                                        + sched.sigma(torch.tensor(nxt)) * torch.randn(x.shape, generator=g))
    torch.testing.assert_close(images, (x * 0.5 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)



def test_a_gamma_student_exports_a_tcd_scheduler_that_samples_as_the_student(digits_like_teacher, tmp_path):
    """model.gamma=0 (MLCM's deterministic jumps): the Student samples with `samplers.tcd`, the export saves a
    TCDScheduler run with eta=gamma, and the pipeline at num_inference_steps=2 is the Student's 2-step sample.
    The only gap: TCDScheduler's last step lands at training index 0 (sqrt(1 - abar_0) ~ 0.03 of its eps
    estimate), where the Student returns x0."""
    from diffusers import DiffusionPipeline, TCDScheduler

    from stepdistill.consistency import ConsistencyDenoiser
    from stepdistill.teachers import load_teacher
    from stepdistill.samplers import tcd
    from stepdistill.sampler_spec import strided as student_timesteps

    out = tmp_path / "run"
    cd.main(_cd(digits_like_teacher, out, "model.gamma=0.0", "train.max_steps=1", "train.checkpoint_every=1"))
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", trust_remote_code=True)
    assert isinstance(pipe.scheduler, TCDScheduler) and pipe.config.gamma == 0.0
    images = pipe(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images

    teacher = load_teacher(digits_like_teacher)
    teacher.net.load_state_dict(load_file(str(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")))
    f = ConsistencyDenoiser(teacher.denoiser(), "lcm")
    student = cd.students(cd.setup(_cd(digits_like_teacher, tmp_path / "again", "model.gamma=0.0")))[0]
    ts = student_timesteps(student.timesteps, 2)
    assert [int(t) for t in ts] == [999, 499]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 16, 16, generator=g) * float(teacher.schedule.sigma(torch.tensor(999.0)))
    with torch.no_grad():
        x = tcd(lambda x, t: f(x, t, class_labels=torch.tensor([3, 7])), teacher.schedule, z, ts, gamma=0.0)
    expected = (x * 0.5 + 0.5).clamp(0, 1)
    diff = (images - expected).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())
    renoised = DiffusionPipeline.from_pretrained(out / "pipeline", trust_remote_code=True)
    renoised.register_to_config(gamma=1.0)  # re-noising between steps (LCM's sampler) is far from it
    other = renoised(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                     output_type="pt").images
    assert (other - expected).abs().mean() > 5 * diff.mean()

@pytest.mark.parametrize("preset", ["tiny_t2i", "tiny_t2i_lora"])
def test_tiny_text_to_image_preset_trains_two_steps_and_stock_diffusers_runs_it_at_four(preset, tmp_path, monkeypatch):
    """w-conditioning (time_cond_proj_dim: the stock pipeline embeds guidance_scale - 1) or an LCM-LoRA, trained
    2 steps on teacher trajectories; the export is the stock pipeline with an LCMScheduler, run at 4 steps."""
    from diffusers import DiffusionPipeline, LCMScheduler

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    cd.main(load_config(cd.ConsistencyDistillConfig, ["--config", f"recipes/configs/consistency_distill/{preset}.yaml",
                                                      f"train.output_dir={tmp_path / 'run'}"]))
    log = [json.loads(line) for line in (tmp_path / "run" / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.original_inference_steps == 50
    assert pipe.scheduler.config.timestep_scaling == 10.0
    if preset == "tiny_t2i":
        assert pipe.unet.config.time_cond_proj_dim == 32
    image = pipe("a red square", num_inference_steps=4, guidance_scale=4.5, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_lcm_lora_loads_into_the_stock_base_pipeline_and_reproduces_the_student(tmp_path, monkeypatch):
    """The LoRA export: `load_lora_weights` on the stock base pipeline with the LCMScheduler settings of its card
    gives the merged student's image for a fixed seed; an alpha other than the rank (scale 4) travels in the
    adapter's metadata."""
    from diffusers import DiffusionPipeline, LCMScheduler

    from stepdistill.tiny import ensure_tiny_text_to_image

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    preset = "recipes/configs/consistency_distill/tiny_t2i_lora.yaml"
    cd.main(load_config(cd.ConsistencyDistillConfig, ["--config", preset, f"train.output_dir={tmp_path / 'run'}",
                                                      "optim.lr=0.05", "model.lora_alpha=16"]))
    folder = tmp_path / "run" / "pipeline"
    assert (folder / "lora" / "pytorch_lora_weights.safetensors").is_file()
    merged = DiffusionPipeline.from_pretrained(folder)
    base = DiffusionPipeline.from_pretrained(ensure_tiny_text_to_image())
    plain = base("a red square", num_inference_steps=4, guidance_scale=1.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    base.load_lora_weights(folder / "lora")
    base.scheduler = LCMScheduler.from_config(base.scheduler.config, timestep_scaling=10.0, original_inference_steps=50)
    kw = dict(num_inference_steps=4, guidance_scale=1.0, output_type="pt")
    a = merged("a red square", generator=torch.Generator().manual_seed(0), **kw).images
    b = base("a red square", generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(a, b, rtol=0, atol=2e-3)
    assert float((a - plain).abs().max()) > 1e-2  # the LoRA trained: not the base model


# ---------------------------------------------------------------------------------------------------------------
# resume, bad input


# One process against two: tests/recipes/test_contract.py (MLCM's trajectories and iCT's pairs in shares).


@pytest.mark.parametrize("recipe,make", [(cd, _cd), (ect, _ect)])
def test_resume_is_bit_identical(recipe, make, digits_like_teacher, tmp_path):
    """Stopped after a step (a zero time limit) and resumed: the student, its EMA target (distillation) and the
    optimiser end exactly as in the uninterrupted run."""
    extra = ("train.max_steps=4", "train.checkpoint_every=2",
             "model.dropout=0.1" if recipe is ect else "loss.target=ema")
    recipe.main(make(digits_like_teacher, tmp_path / "straight", *extra, "optim.lr_schedule=cosine"))
    with pytest.warns(UserWarning, match="limit stopped training at step 1 of 4"):
        recipe.main(make(digits_like_teacher, tmp_path / "resumed", *extra, "optim.lr_schedule=cosine",
                         "train.time_limit_minutes=0"))
    recipe.main(make(digits_like_teacher, tmp_path / "resumed", *extra, "optim.lr_schedule=cosine", "resume=latest"))
    ckpts = [tmp_path / run / "checkpoints" / "step_00000004" for run in ("straight", "resumed")]
    a, b = (load_file(str(c / "model.safetensors")) for c in ckpts)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    opt_a, opt_b = (torch.load(c / "optimizer.bin", weights_only=True) for c in ckpts)
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=0)
    if recipe is cd:  # the EMA target network, registered for checkpointing
        ta, tb = (torch.load(c / "custom_checkpoint_0.pkl", weights_only=True) for c in ckpts)
        assert ta.keys() == tb.keys() and len(ta) > 0
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)


@pytest.mark.parametrize("recipe,make,override,match", [
    (cd, _cd, "loss.segments=[2,4]", "non-increasing"),
    (cd, _cd, "loss.w_min=2", "w_min"),
    (cd, _cd, "loss.solver=heun", "heun"),
    (cd, _cd, "model.guidance_embedding_dim=32", "time_cond_proj_dim"),
    (cd, _cd, "model.inference_steps=60", "inference_steps"),
    (cd, _cd, "loss.levels=7", "divide"),
    (cd, _cd, "eval.student_steps=[1,64]", "student_steps"),
    (ect, _ect, "loss.q=1", "loss.q"),
    (ect, _ect, "model.dropout=1.5", "dropout"),
    (ect, _ect, "model.sigma_min=0.0001", "sigma_min"),
])
def test_bad_input_fails_before_any_step(recipe, make, override, match, digits_like_teacher, tmp_path):
    with pytest.raises(ValueError, match=match):
        recipe.main(make(digits_like_teacher, tmp_path / "x", override))
    assert not (tmp_path / "x" / "checkpoints").exists()
