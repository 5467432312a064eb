"""Mixed precision as a GPU job runs it, on CPU: under bf16 the frozen networks (teacher, text encoders, VAE) are
held in bf16 and run under autocast, the trained roles keep float32 master weights read exactly from the teacher's
source, TF32 is reported, and `train.mixed_precision=auto` follows the launcher."""

from pathlib import Path

import pytest
import torch

import dmd2
import quick
from stepdistill.distributed import resolve_mixed_precision
from stepdistill.teachers import load_teacher
from stepdistill.training import Draw, trainable_params

SMOKE = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "smoke.txt"


@pytest.mark.parametrize("fake_lora", [False, True], ids=["full_fake_score", "lora_fake_score"])
def test_under_bf16_frozen_networks_are_bf16_and_trained_roles_float32(tmp_path, fake_lora, capsys,
                                                                       fresh_accelerate_state):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):  # the GAN's real images: its discriminator reads the (trained) fake score's features
        Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(images / f"{i}.png")
    extra = ["model.fake_score_lora_rank=4"] if fake_lora else []
    cfg = quick.config("dmd2", "tiny-sd", tmp_path / "run", f"data.prompts={SMOKE}", "train.mixed_precision=bf16",
                       f"data.images={images}", "train.batch_size=2", "optim.update_ratio=1", *extra)
    run = dmd2.setup(cfg)
    s = run.setup
    assert "precision: bf16 autocast" in capsys.readouterr().out
    base = {n: p for n, p in s.teacher.net.named_parameters() if "lora_" not in n}
    assert all(p.dtype == torch.bfloat16 for p in base.values())
    assert all(p.dtype == torch.bfloat16 for p in s.space.vae.parameters())
    assert all(p.dtype == torch.bfloat16 for p in s.conditioner.encoder.text_encoder.parameters())
    trained = trainable_params(run.generator, run.fake_score, run.head)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    if fake_lora:  # the adapter trains in float32 on the bf16 base
        assert all(p.dtype == torch.float32 for n, p in s.teacher.net.named_parameters() if "lora_" in n)
    # the generator starts from the teacher's float32 weights exactly, not from their bf16 rounding
    exact = load_teacher("tiny-sd").net.state_dict()
    generator = s.unwrap(run.generator).net.state_dict()
    assert all(torch.equal(generator[k], v) for k, v in exact.items())
    logs = dmd2.step(run, Draw(s.accelerator, 2, seed=0, step=0), 0)
    assert logs["loss_dm"] == logs["loss_dm"] and all(v == v for v in logs.values())  # finite (no NaN)
    assert all(p.dtype == torch.float32 for p in trainable_params(run.generator, run.fake_score, run.head))


def test_auto_follows_the_launcher_and_an_explicit_choice_says_it_overrides_it(monkeypatch, capsys):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision("auto", "cuda") in ("bf16", "no")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision("auto", "cpu") == "fp16"
    assert resolve_mixed_precision("fp16", "cpu") == "fp16" and capsys.readouterr().out == ""
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"
    assert "overrides the launcher's --mixed_precision fp16" in capsys.readouterr().out


def test_a_lora_generator_s_frozen_base_is_bf16_and_its_adapter_float32(tmp_path, fresh_accelerate_state):
    cfg = quick.config("dmd2", "tiny-sd", tmp_path, f"data.prompts={SMOKE}", "train.mixed_precision=bf16",
                       "loss.gan=false", "train.batch_size=2", "optim.update_ratio=1", "model.generator_lora_rank=4")
    run = dmd2.setup(cfg)
    net = run.setup.unwrap(run.generator).net
    assert {p.dtype for n, p in net.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for p in trainable_params(run.generator)} == {torch.float32}
    logs = dmd2.step(run, Draw(run.setup.accelerator, 2, seed=0, step=0), 0)
    assert all(v == v for v in logs.values())
    # evaluated and exported in float32: the teacher's exact weights under the trained adapter (not their bf16
    # rounding, which after a step is larger than the adapter's whole change)
    student = dmd2.students(run)[0].unwrapped(run.setup.accelerator)
    weights = student.generator.net.state_dict()
    assert {v.dtype for v in weights.values()} == {torch.float32}
    exact = load_teacher("tiny-sd").net.state_dict()
    bases = {k: v for k, v in weights.items() if ".base_layer." in k or k in exact}
    assert bases and all(torch.equal(v, exact[k.replace(".base_layer.", ".")]) for k, v in bases.items())
    trained = dict(run.setup.unwrap(run.generator).net.named_parameters())
    assert all(torch.equal(weights[k], p) for k, p in trained.items() if "lora_" in k)


@pytest.mark.slow
def test_train_compile_compiles_the_trained_roles_and_trains_as_eager(digits_like_teacher, tmp_path, monkeypatch,
                                                                      fresh_accelerate_state):
    """`train.compile=true`: the prepared generator and fake score are torch.compile'd (fixed shapes); two steps give
    the eager run's losses and the student's weights keep their own names (checkpoints, export). Traced with
    aot_eager (dynamo and AOT autograd as inductor sees them, without its C++ code generation: minutes on 2 cores)."""
    from accelerate.state import AcceleratorState

    from stepdistill.training import setup as setup_module

    monkeypatch.setattr(setup_module, "COMPILE_BACKEND", "aot_eager")
    from torch._dynamo.eval_frame import OptimizedModule

    logs, weights = {}, {}
    for compile_ in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)  # one accelerator per run, as in a process
        torch.manual_seed(0)
        cfg = quick.config("dmd2", digits_like_teacher, tmp_path / str(compile_), f"train.compile={compile_}",
                           "optim.update_ratio=1")
        run = dmd2.setup(cfg)
        assert isinstance(run.generator, OptimizedModule) == compile_
        assert isinstance(run.fake_score, OptimizedModule) == compile_
        logs[compile_] = [dmd2.step(run, Draw(run.setup.accelerator, 4, seed=0, step=k), k) for k in range(2)]
        weights[compile_] = dmd2.students(run)[0].state_dict()
    assert weights[True].keys() == weights[False].keys()
    for eager, compiled in zip(logs[False], logs[True]):
        for key in ("loss_fake", "loss_dm"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-6)
