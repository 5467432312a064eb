"""Export: pipeline folders that stock diffusers loads, without stepdistill, and that sample like the student."""

import json
import os

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, LCMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors import safe_open

from stepdistill.adapters import activate, add_lora, adapter_names
from without_stepdistill import SEEDED, images_without_stepdistill  # noqa: E402
from stepdistill.export import export_class_conditional, export_text_to_image, push_to_hub, write_model_card

SEED, LABELS = 0, [3, 1]


@pytest.fixture(scope="module", autouse=True)
def _modules_cache(tmp_path_factory):
    """diffusers copies a folder's pipeline file into HF_MODULES_CACHE before importing it: keep it in tmp."""
    import diffusers.utils.dynamic_modules_utils as dynamic

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield dynamic.HF_MODULES_CACHE


@pytest.fixture(scope="module")
def base_sd(tmp_path_factory):
    from stepdistill.tiny import build_tiny_text_to_image

    return build_tiny_text_to_image(tmp_path_factory.mktemp("base") / "tiny-sd", seed=0)


def scheduler_config(prediction_type="v_prediction"):
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type).config


@torch.no_grad()
def reference(unet, config, timesteps, labels, seed):
    """The student sampler written out: z ~ N(0, I) from a CPU generator, x = sigma(t0) z, then per step
    x0 = x0(unet(x, t)), unclipped, and, between steps, x = alpha_s x0 + sigma_s eps with fresh eps."""
    abar = DDPMScheduler.from_config(config).alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((len(labels), 1, 8, 8), generator=g)
    x = (1 - abar[timesteps[0]]).sqrt() * z
    for i, t in enumerate(timesteps):
        alpha, sigma = abar[t].sqrt(), (1 - abar[t]).sqrt()
        out = unet(x, t, class_labels=torch.tensor(labels)).sample
        x0 = alpha * x - sigma * out if config.prediction_type == "v_prediction" else (x - sigma * out) / alpha
        if i + 1 < len(timesteps):
            s = timesteps[i + 1]
            x = abar[s].sqrt() * x0 + (1 - abar[s]).sqrt() * torch.randn(x0.shape, generator=g)
    return (x0 / 2 + 0.5).clamp(0, 1)  # diffusers' image convention


def sample(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe(class_labels=LABELS, generator=torch.Generator().manual_seed(SEED), output_type="pt").images


@pytest.mark.parametrize("prediction_type,timesteps", [("v_prediction", [999]), ("v_prediction", [999, 499]),
                                                       ("epsilon", [999, 499]), ("v_prediction", [800]),
                                                       ("epsilon", [800, 400])])
def test_class_conditional_matches_the_student_sampler(tmp_path, tiny_unet, prediction_type, timesteps):
    config = scheduler_config(prediction_type)
    folder = export_class_conditional(tmp_path / "student", tiny_unet, config, timesteps=timesteps, null_label=3,
                                      model_card={"recipe": "dmd2", "metrics": {"FD": 1.5}})
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["stepdistill_pipeline", "StepDistillClassConditionalPipeline"]
    assert index["timesteps"] == timesteps and index["null_label"] == 3
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in folder.rglob("*"))
    assert "trust_remote_code=True" in (folder / "README.md").read_text()
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), tiny_unet.state_dict().values()))

    pipe, images = sample(folder)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.config.timesteps == timesteps
    torch.testing.assert_close(images, reference(tiny_unet, config, timesteps, LABELS, SEED), atol=1e-5, rtol=0)

    if len(timesteps) > 1:  # other output types, the null label, and a re-save that stays self-contained
        assert pipe(class_labels=7 % 4, output_type="pil").images[0].size == (8, 8)
        assert pipe(num_images=2, output_type="np").images.shape == (2, 8, 8, 1)
        pipe.save_pretrained(tmp_path / "resaved")
        _, again = sample(tmp_path / "resaved")
        torch.testing.assert_close(again, images, atol=0, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("timesteps", [[800], [800, 400]])
def test_class_conditional_export_samples_like_the_trained_student(tmp_path, tiny_unet, timesteps):
    """The exported pipeline and the recipes' `Student` (the trained generator, G(z) = D(sigma(t0) z, t0),
    then re-noising) give the same images from the same generator, at a start time where sigma(t0) < 1."""
    from stepdistill.conditioning import ClassConditioner
    from stepdistill.denoiser import Denoiser
    from stepdistill.latents import PixelSpace
    from stepdistill.schedules import from_scheduler_config
    from stepdistill.sampler_spec import SamplerSpec
    from stepdistill.student import Student
    from stepdistill.roles import Generator

    config = scheduler_config()
    schedule, prediction_type = from_scheduler_config(config)
    generator = Generator(Denoiser(tiny_unet, schedule, prediction_type), timesteps[0])
    assert generator.input_scale < 0.99
    sampler = SamplerSpec(timesteps=tuple(timesteps), input_scale=generator.input_scale)
    student = Student(generator=generator, conditioner=ClassConditioner.for_embeddings(4), schedule=schedule,
                      sampler=sampler, space=PixelSpace(), shape=(1, 8, 8), teacher=None)
    folder = export_class_conditional(tmp_path / "student", tiny_unet, config, timesteps=timesteps, null_label=3)
    _, images = sample(folder)
    x = student.sample_fn()(torch.tensor(LABELS), torch.Generator().manual_seed(SEED))
    # Neither clips x0 between steps; both clip the image at the end (the pipeline's postprocess, decode).
    torch.testing.assert_close(images, PixelSpace().decode(x) / 2 + 0.5, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_loads_in_a_process_without_stepdistill(tmp_path, tiny_unet):
    folder = export_class_conditional(tmp_path / "student", tiny_unet, scheduler_config(), timesteps=[999, 499],
                                      null_label=3)
    _, images = sample(folder)
    torch.testing.assert_close(images_without_stepdistill(folder, tmp_path, "class_labels=[3, 1], " + SEEDED), images,
                               atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("t0", [999, 625], ids=["t0=999", "t0=625"])  # 625: SiD-LSG's start, sigma 0.93
def test_text_to_image_reproduces_the_trained_one_step_generator(tmp_path, base_sd, t0):
    """The stock pipeline's one-step image is the trained generator's G(z) = D(sigma(t0) z, t0), at the
    pipeline's own noise z, also where sigma(t0) != 1 (0.9977 at 999 on SD's schedule, 0.93 at 625)."""
    from stepdistill.roles import Generator
    from stepdistill.teachers import load_teacher

    student = UNet2DConditionModel.from_pretrained(base_sd, subfolder="unet")
    student.conv_in.weight[0, 0, 0, 0] += 0.01
    folder = export_text_to_image(tmp_path / "sd-student", base_sd, student, timesteps=[t0],
                                  model_card={"recipe": "dmd2", "metrics": {"clip": 0.25}})
    assert f"timesteps=[{t0}]" in (folder / "README.md").read_text()
    assert "_name_or_path" not in json.loads((folder / "model_index.json").read_text())

    pipe = DiffusionPipeline.from_pretrained(folder)  # stock: no remote code
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(pipe.unet.conv_in.weight, student.conv_in.weight)
    assert torch.equal(pipe.vae.decoder.conv_out.weight,
                       DiffusionPipeline.from_pretrained(base_sd).vae.decoder.conv_out.weight)
    used = []

    def record(p, i, t, kwargs):
        used.append(int(t))
        return kwargs

    latents = pipe("a red square", num_inference_steps=1, guidance_scale=0, timesteps=[t0], output_type="latent",
                   generator=torch.Generator().manual_seed(SEED), callback_on_step_end=record).images
    assert used == [t0]
    z = torch.randn(latents.shape, generator=torch.Generator().manual_seed(SEED))
    emb = pipe.encode_prompt("a red square", "cpu", 1, False)[0]
    generator = Generator(load_teacher(str(base_sd)).denoiser(net=student), t0)
    assert generator.input_scale < 1 - 1e-3  # the case the unscaled noise got wrong
    torch.testing.assert_close(latents, generator(z, encoder_hidden_states=emb), atol=1e-5, rtol=1e-5)
    image = pipe("a red square", num_inference_steps=1, guidance_scale=0, timesteps=[t0], output_type="np").images
    assert image.shape == (1, 64, 64, 3)


@torch.no_grad()
def test_text_to_image_multistep_card_scales_the_first_input(tmp_path, base_sd):
    """A multistep student keeps LCMScheduler (fresh noise between steps); its card's call passes
    latents = sigma(t0) z, and with them the pipeline's first network input is the generator's."""
    student = UNet2DConditionModel.from_pretrained(base_sd, subfolder="unet")
    folder = export_text_to_image(tmp_path / "sd-4step", base_sd, student, timesteps=[999, 499])
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    sigma_0 = float((1 - pipe.scheduler.alphas_cumprod[999]).sqrt())
    assert f"latents = {sigma_0!r} * torch.randn" in (folder / "README.md").read_text()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(SEED))
    pipe("a red square", num_inference_steps=2, guidance_scale=0, timesteps=[999, 499], latents=sigma_0 * z,
         output_type="latent")
    torch.testing.assert_close(seen[0], sigma_0 * z)


@torch.no_grad()
def test_lora_student_is_merged_into_a_plain_unet(tmp_path, base_sd):
    student = UNet2DConditionModel.from_pretrained(base_sd, subfolder="unet")
    add_lora(student, "generator", rank=4)
    for name, p in student.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.1)
    activate(student, "generator")
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    expected = student(x, 999, encoder_hidden_states=emb).sample

    folder = export_text_to_image(tmp_path / "lora-student", base_sd, student, timesteps=[999])
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "base_layer" in k]
    saved = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    torch.testing.assert_close(saved(x, 999, encoder_hidden_states=emb).sample, expected, atol=1e-5, rtol=1e-5)
    assert adapter_names(student) == {"generator"}  # the caller's network is untouched
    torch.testing.assert_close(student(x, 999, encoder_hidden_states=emb).sample, expected, atol=0, rtol=0)


def test_model_card_front_matter_and_metrics(tmp_path):
    from huggingface_hub import ModelCard

    path = write_model_card(tmp_path, base_model="org/teacher", recipe="dmd2", metrics={"FD": 12.25, "acc": 0.935},
                            pipeline_call="pipe = DiffusionPipeline.from_pretrained('x')", tags=["digits"],
                            pipeline_tag="text-to-image")
    card = ModelCard.load(path)
    assert card.data.library_name == "diffusers" and card.data.base_model == "org/teacher"
    assert {"stepdistill", "diffusion-distillation", "dmd2", "digits"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-to-image"
    assert "| FD | 12.25 |" in card.text and "| acc | 0.935 |" in card.text
    assert "pipe = DiffusionPipeline.from_pretrained('x')" in card.text


TOKEN = "hf_testTOKENabcdefghijklmnopqrstuv"


@pytest.fixture
def hub_calls(monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", self.token, kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return calls


def test_push_to_hub_passes_the_token_but_never_writes_it(tmp_path, tiny_unet, hub_calls):
    folder = export_class_conditional(tmp_path / "student", tiny_unet, scheduler_config(), timesteps=[999],
                                      null_label=3)
    url = push_to_hub(folder, "me/digits-dmd2", token=TOKEN, private=True)
    assert url == "https://huggingface.co/me/digits-dmd2"
    assert [c[:3] for c in hub_calls] == [("create_repo", TOKEN, "me/digits-dmd2"),
                                          ("upload_folder", TOKEN, "me/digits-dmd2")]
    assert hub_calls[0][3]["private"] is True and hub_calls[1][3]["folder_path"] == str(folder)
    assert not [p for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_push_to_hub_refuses_unsafe_folders(tmp_path, tiny_unet, hub_calls, monkeypatch):
    folder = export_class_conditional(tmp_path / "student", tiny_unet, scheduler_config(), timesteps=[999],
                                      null_label=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        push_to_hub(tmp_path / "empty", "me/x", token=TOKEN)
    with pytest.raises(ValueError, match="token"):  # a README leaking the token
        (folder / "README.md").write_text(f"token: {TOKEN}\n")
        push_to_hub(folder, "me/x", token=TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # also the token huggingface_hub would pick up by itself
    with pytest.raises(ValueError, match="token"):
        push_to_hub(folder, "me/x")
    (folder / "README.md").write_text("fine\n")
    (folder / "unet" / "extra.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickled"):
        push_to_hub(folder, "me/x", token=TOKEN)
    (folder / "unet" / "extra.bin").unlink()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        push_to_hub(folder, "me/x", token=TOKEN)
    os.rename(folder / "unet", tmp_path / "unet-away")
    with pytest.raises(ValueError, match="unet"):
        push_to_hub(folder, "me/x", token=TOKEN)
    assert hub_calls == []


def test_a_failed_export_keeps_the_previous_folder(tmp_path, tiny_unet, monkeypatch):
    folder = export_class_conditional(tmp_path / "student", tiny_unet, scheduler_config(), timesteps=[999],
                                      null_label=3)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_unet, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_class_conditional(folder, tiny_unet, scheduler_config(), timesteps=[999, 499], null_label=3)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary folder left behind


def test_inputs_are_validated_before_anything_is_written(tmp_path, tiny_unet, base_sd):
    config = scheduler_config()
    for timesteps, match in [([], "empty"), ([499, 999], "descending"), ([999, 999], "descending"),
                             ([1000], r"\[1, 1000\)"), ([999, 0], r"\[1, 1000\)"), ([999.5], "integers")]:
        with pytest.raises(ValueError, match=match):
            export_class_conditional(tmp_path / "a", tiny_unet, config, timesteps=timesteps, null_label=3)
    with pytest.raises(ValueError, match="null_label"):
        export_class_conditional(tmp_path / "a", tiny_unet, config, timesteps=[999], null_label=4)
    with pytest.raises(ValueError, match="VP-discrete"):
        export_class_conditional(tmp_path / "a", tiny_unet, {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                             "num_train_timesteps": 1000}, timesteps=[999],
                                 null_label=3)
    with pytest.raises(ValueError, match="valid: base_model"):
        export_class_conditional(tmp_path / "a", tiny_unet, config, timesteps=[999], null_label=3,
                                 model_card={"metric": {}})
    with pytest.raises(ValueError, match="model_index.json"):
        export_text_to_image(tmp_path / "b", tmp_path / "no-such-base", tiny_unet, timesteps=[999])
    with pytest.raises(ValueError, match="descending"):
        export_text_to_image(tmp_path / "b", base_sd, tiny_unet, timesteps=[499, 999])
    assert list(tmp_path.iterdir()) == []


def test_exports_carry_no_local_paths(tmp_path, tiny_unet, base_sd):
    """Configs record where a component was loaded from (`_name_or_path`) and a card names its base model:
    neither may leak a local folder. A hub id stays; a local teacher is simply not named."""
    from stepdistill.export import hub_reference

    local = tmp_path / "private" / "teacher"
    tiny_unet.save_pretrained(local / "unet")
    unet = UNet2DModel.from_pretrained(local / "unet")
    assert str(local) in str(dict(unet.config))  # what would leak
    a = export_class_conditional(tmp_path / "a", unet, scheduler_config(), timesteps=[999], null_label=3,
                                 model_card={"base_model": hub_reference(local)})
    b = export_text_to_image(tmp_path / "b", base_sd, UNet2DConditionModel.from_pretrained(base_sd, subfolder="unet"),
                             timesteps=[999])
    for folder, secret in ((a, str(local)), (b, str(base_sd))):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix != ".safetensors":
                assert secret not in path.read_text(errors="ignore"), path
    assert "base_model" not in (a / "README.md").read_text().split("---")[1]
    assert hub_reference("stabilityai/sd-turbo") == "stabilityai/sd-turbo" and hub_reference("digits") is None


def test_model_card_states_the_protocol_the_teacher_rows_and_the_training():
    """A hub page must let a reader trust the numbers: protocol, where the teacher's rows come from, steps,
    minutes, command, and whether the time limit cut training short or fitted its schedule."""
    from stepdistill.training.benchmarks import DigitsRun
    from stepdistill.training.final import _card_text as training_text
    from stepdistill.training.horizon import Horizon

    def _card_text(result, **run):
        return training_text(**run) + (DigitsRun().card(result)[1] if result is not None else "")

    rows = [dict(model="dmd2", sampler="one_step", nfe=1, fd=0.222, fd_std=0.009, accuracy=0.996,
                 seconds_per_image=0.0012),
            dict(model="teacher", sampler="dpmpp_2m", nfe=35, fd=0.183, fd_std=0.013, accuracy=0.996,
                 seconds_per_image=0.046, default=True)]
    result = dict(rows=rows, n_samples=1000, seeds=[0, 1, 2], floor_fd=0.222, teacher_rows="measured in this run")
    cut = Horizon(1600)
    text = _card_text(result, steps_done=1388, horizon=cut, train_minutes=11.5)
    assert "1388 of 1600 steps (stopped by its time limit before its decay ended) in 11.5 minutes" in text
    assert "| teacher | dpmpp_2m | 35 | 0.183 ± 0.013 |" in text and "1000 class-balanced samples" in text
    assert "seeds [0, 1, 2]" in text and "accelerate launch" in text and "measured in the same run" in text
    fitted = Horizon(1600)
    fitted.fit(done=55, seconds_per_step=0.8, seconds_left=600)
    text = _card_text(dict(result, teacher_rows="table: eval/results/teacher_digits.json"), steps_done=fitted.total,
                      horizon=fitted, train_minutes=11.5)
    assert f"{fitted.total} steps (train.max_steps=1600, fitted to its time limit at 0.80 s a step)" in text
    assert "committed baseline" in text and "eval/results/teacher_digits.json" in text
    assert "time limit" not in _card_text(None, steps_done=5, horizon=Horizon(5), train_minutes=0.1)


def test_model_card_license_is_the_teachers(tmp_path):
    """The card's `license` is the teacher's: the project's for its shipped teacher, a local teacher's own
    card's, and `other` with a note when unknown."""
    from stepdistill.export import teacher_license, write_model_card

    assert teacher_license("digits") == teacher_license("digits-edm") == "apache-2.0"
    local = tmp_path / "teacher"
    local.mkdir()
    assert teacher_license(str(local)) is None
    (local / "README.md").write_text("---\nlicense: openrail++\n---\n# a teacher\n")
    assert teacher_license(str(local)) == "openrail++"
    for license, front, note in (("openrail++", "license: openrail++", False), (None, "license: other", True)):
        card = write_model_card(tmp_path / "card", base_model=None, recipe="dmd2", metrics={}, pipeline_call="",
                                license=license).read_text()
        assert front in card.split("---")[1] and ("The license of its teacher applies" in card) == note

def test_a_lora_export_s_card_names_its_base_model_and_scheduler(tmp_path, base_sd):
    """The LoRA card's loading code starts from the base model the LoRA needs (front matter and code), with the
    scheduler the student samples with: LCMScheduler, or TCDScheduler run with eta = gamma."""
    from stepdistill.export import export_lora

    student = UNet2DConditionModel.from_pretrained(base_sd, subfolder="unet")
    add_lora(student, "student", rank=4)
    lcm = export_lora(tmp_path / "lcm", student, "student", timesteps=[999, 499], base_model="org/base",
                      scheduler_options={"timestep_scaling": 10.0})
    card = (lcm / "README.md").read_text()
    assert "base_model: org/base" in card and "DiffusionPipeline.from_pretrained('org/base')" in card
    assert "LCMScheduler.from_config(pipe.scheduler.config, **{'timestep_scaling': 10.0})" in card
    tcd = export_lora(tmp_path / "tcd", student, "student", timesteps=[999, 499],
                      scheduler_options={"timestep_scaling": 10.0, "gamma": 0.0})
    card = (tcd / "README.md").read_text()
    assert "TCDScheduler.from_config" in card and "eta=0.0" in card and "gamma" not in card.split("from_config")[1]
    assert "from_pretrained(BASE_MODEL)" in card  # a local teacher: the user names it


def test_push_to_hub_refuses_a_folder_naming_a_path_of_this_machine(tmp_path, tiny_unet, hub_calls):
    folder = export_class_conditional(tmp_path / "student", tiny_unet, scheduler_config(), timesteps=[999],
                                      null_label=3)
    push_to_hub(folder, "me/x", token=TOKEN)  # a clean export uploads
    (folder / "README.md").write_text(f"trained with model.teacher={tmp_path}/teacher; see https://a.b/c/d\n")
    with pytest.raises(ValueError, match=f"paths of this machine appear in it \\(README.md: {tmp_path}/teacher"):
        push_to_hub(folder, "me/x", token=TOKEN)
    (folder / "README.md").write_text("see https://huggingface.co/a/b, /usr and /no/such/place\n")
    push_to_hub(folder, "me/x", token=TOKEN)
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"] * 2


def test_the_published_command_names_no_local_path():
    from stepdistill.local_paths import ROOT, local_paths, public_command

    argv = [str(ROOT / "recipes" / "dmd2.py"), "model.teacher=/home/me/teachers/sd15", "train.output_dir=~/runs/a",
            "train.output_dir=outputs/x", "--config", str(ROOT / "recipes" / "configs" / "dmd2" / "digits.yaml")]
    assert public_command(argv) == ("accelerate launch recipes/dmd2.py model.teacher=<local>/sd15 "
                                    "train.output_dir=<local>/a train.output_dir=outputs/x "
                                    "--config recipes/configs/dmd2/digits.yaml")
    assert local_paths(public_command(argv)) == []
