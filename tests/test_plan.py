"""`--plan`: a GPU job's per-GPU memory before anything is loaded (`stepdistill.training.plan`).

- every real-model preset plans offline from the shipped model configs, on meta, and prints per-GPU numbers;
- the roles each recipe declares (`plan_roles`) are the ones its `setup` builds (names, parameter counts,
  trainable counts), checked on the tiny teachers, variants included (LoRA roles, shared fake scores, ...);
- the activation estimate (meta, linear in the batch) is what the same network saves for backward on the CPU, and
  close to torch's measured peak of a forward + backward.
"""

import copy
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import quick
from registry import RECIPES
from stepdistill.config import apply_overrides, load_config
from stepdistill.training import footprint as fp
from stepdistill.training.plan import format_plan, plan

ROOT = Path(__file__).resolve().parent.parent
REAL = sorted((name, path) for name, info in RECIPES.items() for path in info.presets()
              if "/" in str((yaml.safe_load(path.read_text()) or {}).get("model", {}).get("teacher", "")))
GIB = 2 ** 30


class DeviceAllocations(TorchDispatchMode):
    """The largest tensor any op makes on a device other than meta."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel() > self.largest[0]:
                self.largest = (t.numel(), str(func))
        return out


@pytest.fixture
def no_setup(monkeypatch):
    """A plan must not load a teacher, build a run or start an accelerator."""
    def refuse(*args, **kwargs):
        raise AssertionError("--plan loaded something")

    import accelerate

    from stepdistill import teachers
    from stepdistill.training import setup

    monkeypatch.setattr(teachers, "load_teacher", refuse)
    monkeypatch.setattr(setup, "load_teacher", refuse)
    monkeypatch.setattr(setup.Setup, "build", classmethod(refuse))
    monkeypatch.setattr(accelerate.Accelerator, "__init__", refuse)


def per_gpu(text: str) -> dict[tuple[str, int], float]:
    """(mode, GPUs) -> total GiB, from the plan's printed table."""
    rows = {}
    for line in text.splitlines():
        for label, mode in (("data-parallel", "ddp"), ("FSDP", "fsdp")):
            if line.startswith(label):
                cells = line[len(label):].split()
                rows[(mode, int(cells[0]))] = float(cells[-1])
    return rows


# the quick tier plans one preset; `make test-all` (and eval/plan_presets.py) every one
QUICK_PRESET = "dmd2/sd15"


@pytest.mark.parametrize("name,preset", [
    pytest.param(n, p, id=f"{n}/{p.stem}", marks=() if f"{n}/{p.stem}" == QUICK_PRESET else pytest.mark.slow)
    for n, p in REAL])
def test_every_real_model_preset_plans_offline_on_meta(name, preset, no_setup, capsys):
    info = RECIPES[name]
    guard = DeviceAllocations()
    with guard:
        assert info.module().cli(info.module(), info.config_class(), ["--config", str(preset), "--plan"]) is None
    out = capsys.readouterr().out
    assert guard.largest[0] <= 1_000_000, f"{guard.largest[0]:,} elements allocated by {guard.largest[1]}"
    rows = per_gpu(out)
    assert set(rows) == {(m, n) for m in ("ddp", "fsdp") for n in (1, 8)}
    assert all(v > 0 for v in rows.values())
    assert rows[("fsdp", 8)] < rows[("ddp", 8)]  # the trained roles' weights, gradients and states are sharded
    assert rows[("ddp", 8)] < rows[("ddp", 1)]  # a smaller micro-batch each
    assert "teacher" in out and "activations per update" in out


def test_plan_roles_and_sharding_of_a_lora_preset(no_setup):
    """Flux DMD2: LoRA fake score on the teacher's network, LoRA generator on a frozen copy; the teacher's network is
    sharded under FSDP (a LoRA trains on it), the text encoders and VAE are not."""
    info = RECIPES["dmd2"]
    cfg = load_config(info.config_class(), ["--config", str(info.preset("flux_4step"))])
    report = plan(info.module(), cfg, (1, 8, 16))
    roles = {r["role"]: r for r in report["roles"]}
    assert roles["fake_score"]["kind"] == roles["generator"]["kind"] == "lora"
    assert roles["fake_score"]["trainable"] == roles["generator"]["trainable"] > 0
    assert roles["teacher"]["params"] == 11_901_408_320 and roles["teacher"]["trainable"] == 0
    assert roles["generator"]["params"] == 11_901_408_320 + roles["generator"]["trainable"]  # its own frozen copy
    assert not roles["text_encoder_2"]["sharded"] and roles["fake_score"]["sharded"]
    assert [g["gpus"] for g in report["gpus"]] == [1, 8, 16]
    one, sixteen = report["gpus"][0], report["gpus"][2]
    text_and_vae = sum(r["params"] for n, r in roles.items() if n.startswith(("text_encoder", "vae"))) * 2 / GIB
    # FSDP divides everything but the frozen text encoders and VAE (bf16) and the activations
    fsdp = sixteen["fsdp"]
    assert fsdp["parameters"] == pytest.approx(text_and_vae + (one["fsdp"]["parameters"] - text_and_vae) / 16)
    assert "fake_score" in format_plan(report) and "LoRA r64" in format_plan(report)


def test_a_micro_batch_and_extra_gpu_counts(no_setup, capsys):
    info = RECIPES["sid"]
    with pytest.raises(SystemExit) as e:  # --gpus sizes a plan only
        info.module().cli(info.module(), info.config_class(), ["--config", str(info.preset("sd15")), "--gpus", "8"])
    assert e.value.code == 2 and "--gpus" in capsys.readouterr().err
    cli = info.module().cli
    assert cli(info.module(), info.config_class(), ["--config", str(info.preset("sd15")), "--plan", "--gpus=4,16",
                                                    "train.micro_batch_size=2"]) is None
    out = capsys.readouterr().out
    assert {n for _, n in per_gpu(out)} == {1, 4, 8, 16} and "micro-batch 2" in out
    # the same micro-batch on every count: the activations do not change, only what FSDP divides
    cfg = load_config(info.config_class(), ["--config", str(info.preset("sd15")), "train.micro_batch_size=2"])
    report = plan(info.module(), cfg, (1, 8))
    assert report["gpus"][0]["fsdp"]["activations"] == report["gpus"][1]["fsdp"]["activations"]
    assert {r["role"]: r["backprop"] for r in report["roles"]}["teacher"]  # SiD differentiates through the teacher


def test_a_recipe_run_as_a_script_plans_from_its_own_file(no_setup, monkeypatch, capsys):
    """`python recipes/dmd2.py --plan`: `cli` runs before the end of the file (where `plan_roles` is) has run."""
    monkeypatch.setattr(sys, "argv", ["dmd2.py", "--config", "recipes/configs/dmd2/sd15.yaml", "--plan"])
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "recipes" / "dmd2.py"), run_name="__main__")
    assert ("fsdp", 8) in per_gpu(capsys.readouterr().out)


def test_a_teacher_without_configs_is_one_error_line(no_setup, capsys):
    info = RECIPES["dmd2"]
    with pytest.raises(SystemExit) as e:
        info.module().cli(info.module(), info.config_class(), ["--config", str(info.preset("sd15")), "--plan",
                                                               "model.teacher=someone/some-model"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --plan: teacher 'someone/some-model' is neither a shipped model config")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err


@pytest.mark.slow
def test_the_command_line_exits_0_before_any_setup(tmp_path):
    """Both launchers, as scripts: the plan prints and the process exits 0 without creating the output folder."""
    out = tmp_path / "never"
    for launcher in ([sys.executable], [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                                        "--cpu"]):
        done = subprocess.run([*launcher, "recipes/dmd2.py", "--config", "recipes/configs/dmd2/sdxl_4step.yaml",
                               "--plan", "--gpus", "16", f"train.output_dir={out}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert ("fsdp", 16) in per_gpu(done.stdout) and not out.exists()


# ----------------------------------------------------------------------------
# The declared roles are the built ones.

VARIANTS = {
    "dmd2": [(), ("model.fake_score_lora_rank=4", "model.generator_lora_rank=4", "loss.regression_weight=0.5",
                  "loss.regression_pairs=4", "loss.regression_nfe=2")],
    "consistency_distill": [(), ("model.lora_rank=4",), ("model.lora_rank=4", "loss.target=online")],
    "msd": [(), ("model.fake_score=shared",),
            ("model.student_width=0.5", "model.tsm_steps=1", "model.fake_score_lora_rank=4")],
    "tadsr": [(), ("loss.gan_weight=0",)],
    "sid": [(), ("loss.guidance=2.0", "loss.fake_samples=fresh")],
}
CASES = [(name, extra) for name in RECIPES for extra in VARIANTS.get(name, [()])]


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{n}{'-' + '-'.join(e) if e else ''}" for n, e in CASES])
def test_declared_roles_are_the_roles_setup_builds(name, extra, tiny_teachers, tmp_path, fresh_accelerate_state):
    info = RECIPES[name]
    cfg = quick.config(name, tiny_teachers[info.tiny_teacher], tmp_path, *extra)
    run = info.module().setup(cfg)
    built = {r["role"]: (r["params"], r["trainable"]) for r in fp.footprint(run)["roles"]}
    report = plan(info.module(), cfg, (1,), teacher=run.setup.teacher)
    planned = {r["role"]: (r["params"], r["trainable"]) for r in report["rows"]}
    assert planned == built
    # the run's own estimate (printed at setup) is the plan's at one process and the same micro-batch
    assert fp.footprint(run)["mib"]["activations"] * 2**20 == pytest.approx(
        report["gpus"][0]["ddp"]["activations"] * GIB, rel=1e-6)


# ----------------------------------------------------------------------------
# The activation estimate against what a real network saves.

def small_unet():
    """A class-conditional pixel UNet with attention at two resolutions (~1 M parameters)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       num_class_embeds=11, attention_head_dim=16).eval()


def cpu_student(net, checkpointing: bool):
    """What the consistency recipe trains: a trainable copy of the teacher, in the teacher's `Denoiser`."""
    from stepdistill.networks import set_gradient_checkpointing
    from stepdistill.training.plan import teacher_from

    student = copy.deepcopy(net).train().requires_grad_(True)
    set_gradient_checkpointing(student, checkpointing)
    return teacher_from(net).teacher.denoiser(net=student), student


def cpu_inputs(batch: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, 16, 16, generator=g), torch.full((batch,), 499.5),
            {"class_labels": torch.randint(0, 10, (batch,), generator=g)})


def consistency_plan(net, batch: int, *extra: str) -> dict:
    info = RECIPES["consistency_distill"]
    cfg = apply_overrides(info.config_class()(), [f"train.batch_size={batch}", *extra])
    return plan(info.module(), cfg, (1,), teacher=net)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_the_estimate_is_what_the_network_saves_and_near_torch_s_peak(checkpointing):
    """The plan's estimate (measured on meta at 2 and 3 samples, extended linearly to 8) against the same student's
    forward on the CPU at 8 samples:

    - within 15% of the bytes it saves for backward, measured the same way (every saved storage once, parameters
      left out, checkpointed blocks' inputs counted; the CPU runs the real checkpoint and attention kernels);
    - below torch's measured peak of one forward + backward (`torch.distributed._tools.mem_tracker.MemTracker`,
      which follows every storage on any device): its peak of activation and temporary memory (parameters and
      gradients are counted apart) holds what the forward saved plus the backward's working set (a layer's
      gradients; with checkpointing, one block's recomputed activations), so it lies 0-35% above the estimate."""
    torch.manual_seed(0)
    net, batch = small_unet(), 8
    report = consistency_plan(net, batch, f"model.gradient_checkpointing={str(checkpointing).lower()}")
    estimate = report["gpus"][0]["ddp"]["activations"] * GIB
    denoiser, student = cpu_student(net, checkpointing)
    x, t, cond = cpu_inputs(batch)
    saved = fp.saved_for_backward(lambda: denoiser(x, t, **cond), [student]).total
    assert estimate == pytest.approx(saved, rel=0.15)
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    tracker = mem_tracker.MemTracker()
    tracker.track_external(student)
    with tracker:
        denoiser(x, t, **cond).square().mean().backward()
    peak = {str(k).split(".")[-1]: v for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items()}
    activations = peak["ACT"] + peak["TEMP"]
    assert 0.74 * activations <= estimate <= 1.05 * activations, (estimate / 2**20, activations / 2**20)


def test_the_mixed_precision_estimate_is_what_autocast_saves(monkeypatch):
    """bf16: the plan's autocast policy against torch.autocast on the CPU. CPU autocast keeps norms and softmax in
    bf16 (CUDA's, which the plan follows, runs them in float32), so the policy's float32 list is emptied here."""
    monkeypatch.setattr(fp, "_FP32", [])
    torch.manual_seed(0)
    net, batch = small_unet(), 8
    report = consistency_plan(net, batch, "train.mixed_precision=bf16")
    estimate = report["gpus"][0]["ddp"]["activations"] * GIB
    assert report["activations"]["generator"]["weight_copies_gib"] > 0  # the bf16 copies of the fp32 student
    denoiser, student = cpu_student(net, False)
    x, t, cond = cpu_inputs(batch)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return denoiser(x, t, **cond)

    measured = fp.saved_for_backward(forward, [student]).total
    assert estimate == pytest.approx(measured, rel=0.15)
