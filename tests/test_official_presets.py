"""The real-model presets copy the official scripts key by key: every key a preset claims is checked here
against a table written from those scripts (cited per row), so a preset cannot drift from its source or
inherit a digits-tuned default (DMD2's GAN range, its EMA) unnoticed."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
from registry import RECIPES  # noqa: E402
from stepdistill.config import load_config  # noqa: E402

CONFIGS = {name: info.config_class() for name, info in RECIPES.items()}

# tianweiy/DMD2: main/train_sd.py, main/sd_guidance.py, main/edm/edm_guidance.py and the launch scripts.
DMD2_COMMON = {
    "loss.min_step": 0.02, "loss.max_step": 0.98,  # --min_step_percent / --max_step_percent
    "loss.gan": True, "loss.gan_max_t": 1.0,  # --diffusion_gan --diffusion_gan_max_timestep 1000
    "loss.gan_balance": None, "loss.gan_discriminator_weight": 1e-2,  # --guidance_cls_loss_weight 1e-2
    "loss.fake_times": "teacher",  # compute_loss_fake: U[0, 1000) (the Karras table on EDM)
    "loss.fake_samples": "shared",  # train_one_step: generator turn first, then the guidance turn on its images
    "optim.betas": (0.9, 0.999), "optim.weight_decay": 0.01,  # AdamW
    "optim.warmup_steps": 500, "optim.lr_schedule": "constant",  # constant_with_warmup, 500
    "optim.grad_clip": 10.0, "train.ema_decay": None,  # max_grad_norm 10; no EMA (utils.EMA unused)
    "loss.regression_weight": 0.0,
}
DMD2 = {
    # experiments/sdv1.5/*.sh: guidance 1.75, ratio 10, lr 1e-5, gen_cls 1e-3, batch 32 x 64 GPUs
    "dmd2/sd15": DMD2_COMMON | {"loss.real_guidance": 1.75, "optim.update_ratio": 10, "optim.lr_generator": 1e-5,
                                "optim.lr_fake": 1e-5, "loss.gan_generator_weight": 1e-3,
                                "model.generator_timesteps": (999.0,), "train.batch_size": 2048},
    # experiments/sdxl/*4step*.sh: guidance 8, ratio 5, lr 5e-7, gen_cls 5e-3, batch 2 x 64, steps 999..249
    "dmd2/sdxl_4step": DMD2_COMMON | {"loss.real_guidance": 8.0, "optim.update_ratio": 5,
                                      "optim.lr_generator": 5e-7, "optim.lr_fake": 5e-7,
                                      "loss.gan_generator_weight": 5e-3, "train.batch_size": 128,
                                      "model.generator_timesteps": (999.0, 749.0, 499.0, 249.0)},
    # experiments/imagenet/*.sh: no guidance, ratio 5, lr 2e-6, gen_cls 3e-3, batch 40 x 7, sigma 80 input
    "dmd2/edm_imagenet64": DMD2_COMMON | {"loss.real_guidance": 1.0, "optim.update_ratio": 5,
                                          "optim.lr_generator": 2e-6, "optim.lr_fake": 2e-6,
                                          "loss.gan_generator_weight": 3e-3, "train.batch_size": 280,
                                          "model.generator_timesteps": (80.0,)},
}
# mingyuanzhou/SiD-LSG: run_sid.sh and training/sid_training_loop.py (SIM takes these: it has no
# released trainer, and SiD is its special case).
SID_LSG = {
    "model.generator_timesteps": (625.0,), "loss.guidance": 1.5,  # init_timestep 625; LSG kappa 1.5
    "loss.min_step": 0.02, "loss.max_step": 0.98,  # t ~ U[20, 980) for the generator loss
    "loss.fake_weighting": "eps", "loss.fake_times": "index",  # eps-MSE fake loss at the same indices
    "loss.fake_samples": "fresh",  # G runs twice a step: a batch for each update
    "optim.lr_generator": 1e-6, "optim.lr_fake": 1e-6, "optim.betas": (0.0, 0.999),
    "optim.lr_schedule": "constant", "train.batch_size": 512, "data.prompt_dropout": 0.1,
}
# VinAIResearch/SwiftBrush: train_swiftbrush.py and its README.
SWIFTBRUSH = {
    "model.lora_rank": 64, "model.lora_alpha": 108, "model.lora_targets": ("to_q", "to_v"),
    "model.generator_timesteps": (999.0,), "loss.real_guidance": 4.5, "loss.fake_guidance": 4.5,
    "loss.min_step": 0.02, "loss.max_step": 0.981,  # VSD t ~ U[20, 981)
    "loss.fake_times": "teacher",  # LoRA loss t ~ U[0, 1000)
    "optim.lr_generator": 1e-6, "optim.lr_lora": 1e-3, "optim.betas": (0.9, 0.999), "optim.grad_clip": 1.0,
    "optim.warmup_steps": 0, "data.prompt_dropout": 0.1,
}
# huggingface/diffusers: examples/consistency_distillation/train_lcm_distill{,_lora}_{sd,sdxl}_wds.py (defaults)
# and their README (lr 1e-6 full, 1e-4 LoRA); the LCM-LoRA report's fixed guidance 7.5 (w = 7.5 - 1 here).
LCM_COMMON = {
    "model.boundary": "lcm", "model.timestep_scaling": 10.0,  # --timestep_scaling_factor 10
    "loss.levels": 50, "loss.solver": "ddim",  # --num_ddim_timesteps 50, DDIMSolver
    "loss.solver_zero": "lowest_level",  # DDIMSolver steps the boundary pair to alphas_cumprod[0]
    "loss.states": "real",  # VAE latents of the webdataset images
    "optim.betas": (0.9, 0.999), "optim.weight_decay": 1e-2,  # --adam_beta1/2, --adam_weight_decay 1e-2
    "optim.warmup_steps": 500, "optim.lr_schedule": "constant",  # --lr_warmup_steps 500, constant
    "optim.grad_clip": 1.0, "data.prompt_dropout": 0.0,  # --max_grad_norm 1.0, --proportion_empty_prompts 0
}
LCM_LORA = LCM_COMMON | {
    "model.lora_rank": 64, "model.lora_alpha": 64,  # --lora_rank 64 --lora_alpha 64, LCM's target modules
    "loss.target": "online",  # "we do not use a separate target network": the LoRA UNet under no_grad
    "loss.metric": "huber", "loss.huber_c": 0.001,  # README --loss_type huber, --huber_c 0.001
    "loss.w_min": 6.5, "loss.w_max": 6.5, "optim.lr": 1e-4,
}
# Presets with no published run on their family: the settings they take from a published one (cited in each
# preset's header) plus the family's own (flow student times, guidance, resolution).
SDXL_4STEP = {k: v for k, v in DMD2["dmd2/sdxl_4step"].items() if k != "model.generator_timesteps"}
FLOW_4STEP = (1.0, 0.75, 0.5, 0.25)  # FluxPipeline's default 4-step sigmas
TRANSFERRED = {
    "dmd2/sd3_4step": SDXL_4STEP | {"model.generator_timesteps": FLOW_4STEP, "loss.real_guidance": 7.0},
    "dmd2/flux_4step": SDXL_4STEP | {"model.generator_timesteps": FLOW_4STEP, "loss.real_guidance": 1.0,
                                     "data.embedded_guidance": 3.5, "model.generator_lora_rank": 64,
                                     "model.fake_score_lora_rank": 64, "optim.lr_generator": 5e-5,
                                     "optim.lr_fake": 5e-5},  # DMD2's SDXL LoRA rate
    # SiD's sigma_init 2.5 (SD's t = 625) as a flow time: 2.5 / 3.5
    "sid/sd3": SID_LSG | {"loss.alpha": 1.0, "model.generator_timesteps": (0.714,)},
    "sid/flux": SID_LSG | {"loss.alpha": 1.0, "model.generator_timesteps": (0.714,), "loss.guidance": 1.0,
                           "data.embedded_guidance": 3.5, "data.resolution": 512},
}
OFFICIAL = DMD2 | TRANSFERRED | {
    "consistency_distill/sd15": LCM_COMMON | {
        "model.guidance_embedding_dim": 256, "loss.w_min": 5.0, "loss.w_max": 15.0,  # --unet_time_cond_proj_dim
        "loss.metric": "l2", "loss.target": "ema", "loss.target_decay": 0.95, "optim.lr": 1e-6},  # --ema_decay
    "consistency_distill/sdxl": LCM_COMMON | {
        "model.guidance_embedding_dim": 256, "loss.w_min": 3.0, "loss.w_max": 15.0,  # the SDXL script's w range
        "loss.metric": "l2", "loss.target": "ema", "loss.target_decay": 0.95, "optim.lr": 1e-6},
    "consistency_distill/sd15_lora": LCM_LORA, "consistency_distill/sdxl_lora": LCM_LORA,
    "sid/sd15": SID_LSG | {"loss.alpha": 1.0}, "sid/sd21_base": SID_LSG | {"loss.alpha": 1.0},
    "sim/sd15": SID_LSG, "sim/sd21_base": SID_LSG,
    "swiftbrush/sd21_base": SWIFTBRUSH, "swiftbrush/sd15": SWIFTBRUSH,
    # tqch/score-forgetting-distillation: DDPM/configs/cifar10_sfd.yml and runners/diffusion.py::train_sfd
    "sfd/cifar10": {"loss.alpha": 1.2, "model.generator_timesteps": (440.0,), "loss.min_step": 0.038,
                    "loss.max_step": 0.712, "loss.remain_coef": 1.0, "loss.forget_coef": 0.01,
                    "loss.fake_remain_coef": 1.0, "loss.fake_forget_coef": 0.01, "loss.override": (1,),
                    "optim.lr_generator": 1e-5, "optim.lr_fake": 1e-5, "optim.betas": (0.0, 0.999),
                    "train.batch_size": 256, "train.max_steps": 50000, "train.ema_decay": 0.9999},
    # BOOT publishes no code or configuration: the preset's own choices, pinned (SD1.5's 50-step DDIM trajectory at
    # its pipeline's default guidance 7.5)
    "boot/sd15": {"loss.levels": 50, "loss.guidance": 7.5, "model.steps": 1},
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return tuple(value) if isinstance(value, list) else value


def _matches(got, want) -> bool:
    if isinstance(want, (str, tuple, bool, type(None))) or isinstance(got, (bool, type(None))):
        return got == want
    return got == pytest.approx(want, rel=1e-9)


def test_every_real_model_preset_is_in_the_table():
    presets = {f"{p.parent.name}/{p.stem}" for r in CONFIGS for p in (ROOT / "recipes" / "configs" / r).glob("*.yaml")
               if not p.stem.startswith(("digits", "tiny")) and p.stem != RECIPES[r].default_preset}
    assert presets == set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_matches_the_official_script(name):
    recipe, stem = name.split("/")
    cfg = load_config(CONFIGS[recipe], ["--config", str(ROOT / "recipes" / "configs" / recipe / f"{stem}.yaml")])
    wrong = {key: (_get(cfg, key), want) for key, want in OFFICIAL[name].items() if not _matches(_get(cfg, key), want)}
    assert not wrong, f"{name}: (preset, official) {wrong}"


# ---------------------------------------------------------------------------------------------------------------
# every real-model preset runs: one training step on the tiny random pipeline of its family

def _family(teacher: str) -> str | None:
    t = teacher.lower()
    if "stable-diffusion-xl" in t:
        return "tiny-sdxl"
    if "stable-diffusion-3" in t:
        return "tiny-sd3"
    if "flux" in t:
        return "tiny-flux"
    if "stable-diffusion" in t:
        return "tiny-sd"
    return None  # dmd2/edm_imagenet64: a class-conditional EDM network, no text pipeline


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(64, 64, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("name", [
    # the quick tier trains two presets (a full network, a LoRA); `make test-all` every one
    pytest.param(n, marks=() if n in ("dmd2/sd15", "consistency_distill/sd15_lora") else pytest.mark.slow)
    for n in sorted(n for n in OFFICIAL if _family(load_config(
        CONFIGS[n.split("/")[0]], ["--config", str(ROOT / "recipes" / "configs" / f"{n}.yaml")]).model.teacher))])
def test_every_real_model_preset_trains_a_step_on_its_familys_tiny_pipeline(name, image_folder, tmp_path, monkeypatch):
    """The preset's whole configuration (its loss, guidance, LoRA, step times, schedule) runs on the tiny pipeline
    of the teacher's family; only the sizes (batch, resolution, steps) and precision are overridden."""
    import importlib

    recipe, stem = name.split("/")
    module = importlib.import_module(recipe)
    preset = ROOT / "recipes" / "configs" / recipe / f"{stem}.yaml"
    cfg = load_config(CONFIGS[recipe], ["--config", str(preset)])
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path.parent / "families-cache"))
    monkeypatch.chdir(ROOT)
    cfg = load_config(CONFIGS[recipe], [
        "--config", str(preset), f"model.teacher={_family(cfg.model.teacher)}", f"train.output_dir={tmp_path / 'run'}",
        "train.batch_size=2", "train.max_steps=1", "train.mixed_precision=no", "optim.warmup_steps=0",
        "data.prompts=assets/prompts/smoke.txt", "data.resolution=64", "export.enabled=false", "eval.enabled=false",
        *([] if RECIPES[recipe].family == "bootstrapping" else [f"data.images={image_folder}"])])  # BOOT: data-free
    module.main(cfg)
    log = (tmp_path / "run" / "log_rank0.jsonl").read_text().splitlines()
    assert log and all(torch.isfinite(torch.tensor(v)) for v in json.loads(log[0]).values())
