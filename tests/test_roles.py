import pytest
import torch
from diffusers import DDPMScheduler

from stepdistill.networks import trainable
from stepdistill.roles import Generator, make_fake_score, make_generator, make_real_score
from stepdistill.teachers import TeacherLoadError, load_teacher


@pytest.fixture
def teacher_folder(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / "teacher" / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        tmp_path / "teacher" / "scheduler")
    return tmp_path / "teacher"


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor([100.0, 500.0, 900.0]), dict(class_labels=torch.tensor([0, 1, 2]))


def test_load_teacher_from_local_folder(teacher_folder, tiny_unet):
    teacher = load_teacher(teacher_folder)
    assert teacher.prediction_type == "v_prediction" and teacher.component == "unet"
    assert not any(p.requires_grad for p in teacher.net.parameters())
    x_t, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(teacher.net(x_t, t, **cond).sample, tiny_unet(x_t, t, **cond).sample)


def test_load_teacher_errors_are_clear(tmp_path, teacher_folder):
    with pytest.raises(TeacherLoadError, match="no unet/config.json or transformer/config.json"):
        load_teacher(tmp_path)  # a folder, but not a pipeline
    (teacher_folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(TeacherLoadError, match="prediction type"):
        load_teacher(teacher_folder)
    with pytest.raises(TeacherLoadError, match="could not be loaded from the hub"):
        load_teacher("nobody/no-such-model-offline")


def test_shipped_digits_teacher_loads():
    teacher = load_teacher("digits")
    x0 = make_real_score(teacher)(torch.zeros(2, 1, 16, 16), 500.0, class_labels=torch.tensor([3, 10]))
    assert x0.shape == (2, 1, 16, 16) and torch.isfinite(x0).all()


def _one_step(denoiser, params):
    opt = torch.optim.SGD(params, lr=1.0)
    x_t, t, cond = _inputs()
    denoiser(x_t, t, **cond).square().mean().backward()
    opt.step()


def test_lora_fake_score_toggle_leaves_real_score_unchanged(teacher_folder):
    teacher = load_teacher(teacher_folder)
    real = make_real_score(teacher)
    x_t, t, cond = _inputs()
    with torch.no_grad():
        before = real(x_t, t, **cond)
    base = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    fake = make_fake_score(teacher, lora_rank=4, target_modules=["to_q", "to_k", "to_v", "conv1", "conv2"])
    trainable_params = [p for p in fake.parameters() if p.requires_grad]
    assert trainable_params and all("lora" in n for n, p in fake.named_parameters() if p.requires_grad)
    assert fake.net is real.net  # one network in memory, two roles
    _one_step(fake, trainable_params)
    with torch.no_grad():
        after_real, after_fake = real(x_t, t, **cond), fake(x_t, t, **cond)
        real_again = real(x_t, t, **cond)  # toggling back and forth is stateless
    torch.testing.assert_close(after_real, before, rtol=0, atol=0)
    torch.testing.assert_close(real_again, before, rtol=0, atol=0)
    assert (after_fake - before).abs().max() > 1e-4, "the fake score did not move"
    for k, v in teacher.net.state_dict().items():
        if k in base:
            torch.testing.assert_close(v, base[k], rtol=0, atol=0)


def test_full_copy_fake_score_and_generators_are_independent(teacher_folder):
    teacher = load_teacher(teacher_folder)
    real = make_real_score(teacher)
    fake = make_fake_score(teacher)
    students = make_generator(teacher, copies=2)
    assert isinstance(students[0], Generator) and students[0].t_init == teacher.schedule.t_max
    assert fake.net is not teacher.net and students[0].net is not students[1].net
    x_t, t, cond = _inputs()
    with torch.no_grad():
        before = real(x_t, t, **cond)
        g_before = students[1](x_t, **cond)
    _one_step(fake, list(fake.parameters()))
    _one_step(students[0].denoiser, list(students[0].parameters()))
    with torch.no_grad():
        torch.testing.assert_close(real(x_t, t, **cond), before, rtol=0, atol=0)
        torch.testing.assert_close(students[1](x_t, **cond), g_before, rtol=0, atol=0)


def test_generator_is_the_denoiser_on_pure_noise_at_t_init(teacher_folder):
    teacher = load_teacher(teacher_folder)
    gen = make_generator(teacher, t_init=999)
    z, _, cond = _inputs()
    sigma = float(teacher.schedule.sigma(torch.tensor(999.0)))
    with torch.no_grad():
        torch.testing.assert_close(gen(z, **cond), make_real_score(teacher)(sigma * z, 999.0, **cond))


def test_lora_generator_after_lora_fake_score(teacher_folder):
    teacher = load_teacher(teacher_folder)
    make_fake_score(teacher, lora_rank=4)
    gen = make_generator(teacher, lora_rank=4)
    names = [n for n, p in gen.named_parameters() if p.requires_grad]
    assert names and all("lora" in n and "fake_score" not in n for n in names)


def test_trainable_toggles_only_trainable_parameters(teacher_folder):
    teacher = load_teacher(teacher_folder)
    fake = make_fake_score(teacher, lora_rank=4)
    lora = {n for n, p in fake.named_parameters() if p.requires_grad}
    with trainable(fake, False):
        assert not any(p.requires_grad for p in fake.parameters())
    assert {n for n, p in fake.named_parameters() if p.requires_grad} == lora


def test_target_network_is_a_frozen_copy_moved_only_by_ema_update(teacher_folder):
    """make_target: a frozen copy; ema_update(target, online, mu): theta^- <- mu theta^- + (1 - mu) theta."""
    from stepdistill.networks import ema_update, make_target

    online = make_fake_score(load_teacher(teacher_folder))
    target = make_target(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = [p.detach().clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    ema_update(target, online, 0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    ema_update(target, online, 0.0)  # mu = 0: the online network itself (iCT / ECT)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="mu"):
        ema_update(target, online, 1.5)


def test_checkpointing_recomputes_with_the_adapters_of_the_forward_pass(tiny_cond_unet):
    """A LoRA fake score shares the teacher's network: after its forward pass another role runs with adapters
    off, then the backward pass recomputes. The gradients equal those without checkpointing; with diffusers'
    default checkpointing the recompute ran the wrong weights and torch refused it."""
    import copy

    from stepdistill.adapters import activate, add_lora
    from stepdistill.networks import set_gradient_checkpointing

    net = copy.deepcopy(tiny_cond_unet)
    add_lora(net, "fake", rank=4)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a trained adapter, not the identity
    x = torch.randn(2, 4, 8, 8)
    cond = dict(timestep=torch.tensor([500, 300]), encoder_hidden_states=torch.randn(2, 77, 16))

    def grads(checkpointed: bool) -> torch.Tensor:
        set_gradient_checkpointing(net, checkpointed)
        xin = x.clone().requires_grad_(True)
        activate(net, "fake")
        out = net(xin, **cond).sample
        activate(net, None)  # the real score's turn before the backward pass
        with torch.no_grad():
            net(x, **cond)
        out.square().sum().backward()
        return xin.grad

    torch.testing.assert_close(grads(True), grads(False), atol=1e-5, rtol=1e-5)


def test_every_role_can_be_checkpointed(tmp_path):
    """Real score (SiD and SIM backpropagate through it), fake score and generator."""
    from stepdistill.roles import make_fake_score, make_generator, make_real_score
    from stepdistill.teachers import load_teacher
    from stepdistill.tiny import build_tiny_text_to_image

    teacher = load_teacher(build_tiny_text_to_image(tmp_path / "sd"))
    real = make_real_score(teacher, gradient_checkpointing=True)
    fake = make_fake_score(teacher, gradient_checkpointing=True)
    gen = make_generator(teacher, gradient_checkpointing=True)
    assert all(n.is_gradient_checkpointing for n in (real.net, fake.net, gen.net))
    lora_fake = make_fake_score(load_teacher(tmp_path / "sd"), lora_rank=4, gradient_checkpointing=True)
    assert lora_fake.net.is_gradient_checkpointing
