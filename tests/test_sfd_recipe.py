"""SFD (recipes/sfd.py): the loss against the official formula, which network sees which label in a step and what
each row weighs, the forgetting on the exact 2-D teacher, the prompt form, and the model card's statement. (The
contract suite covers resume, processes, export, bad input and presets; digits quality is the recipe's own run.)"""

import pytest
import torch
from torch import nn

import quick
import sfd
from stepdistill import losses
from stepdistill.training import Draw

ALPHA = 1.2


def _official_g_loss(x0, p_x, sg_x, alpha):
    """`DDPM/functions/losses.py::sid_g_loss_conditional`'s expression (alpha != 1), per sample summed, batch mean."""
    omega = (p_x - x0).abs().float().mean(dim=[1, 2, 3], keepdim=True).clamp(min=0.00001).detach()
    return ((p_x - sg_x) * ((p_x - x0) - alpha * (p_x - sg_x))).div(omega).sum(dim=(1, 2, 3)).mean(dim=0)


def test_sfd_loss_is_the_official_two_term_loss_up_to_its_element_count():
    """`DDPM/runners/diffusion.py::train_sfd`: g_remain_coef * loss(remain) + g_forget_coef * loss(forget), with the
    teacher's prediction at the override on the forget batch; here one batch, the forgotten rows interleaved, weighted
    2 coef: the same value over N elements a sample, the same gradients to x and to both predictions."""
    g = torch.Generator().manual_seed(0)
    shape = (6, 1, 4, 4)
    x, r, f = (torch.randn(*shape, generator=g, requires_grad=True) for _ in range(3))
    forgotten = torch.arange(6) % 2 == 1
    remain_coef, forget_coef = 1.0, 0.01
    official = (remain_coef * _official_g_loss(x[~forgotten], r[~forgotten], f[~forgotten], ALPHA)
                + forget_coef * _official_g_loss(x[forgotten], r[forgotten], f[forgotten], ALPHA))
    weight = torch.where(forgotten, 2 * forget_coef, 2 * remain_coef)
    mine = losses.sfd_loss(x, r, f, weight, ALPHA) * 16  # N = 16 elements a sample
    torch.testing.assert_close(mine, official)
    for a, b in zip(torch.autograd.grad(mine, (x, r, f)), torch.autograd.grad(official, (x, r, f))):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(losses.sfd_loss(x, r, f, torch.ones(6), ALPHA), losses.sid_loss(x, r, f, ALPHA))


def _spied_step(teacher, tmp_path, *extra):
    """One SFD step on the tiny teacher; the labels each network saw, in call order, and the weights each loss got."""
    run = sfd.setup(quick.config("sfd", teacher, tmp_path, "train.batch_size=8", *extra))
    seen = {"generator": [], "teacher": [], "fake": []}
    for key, module in (("generator", run.setup.unwrap(run.generator).denoiser), ("teacher", run.real.denoiser),
                        ("fake", run.setup.unwrap(run.fake_score))):
        module.register_forward_pre_hook(lambda m, a, kw, key=key: seen[key].append(kw["class_labels"].clone()),
                                         with_kwargs=True)
    weights = {}
    sfd_loss, denoising_loss = losses.sfd_loss, losses.denoising_loss

    def spy_sfd(x, r, f, weight, alpha):
        weights["generator"] = weight
        return sfd_loss(x, r, f, weight, alpha)

    def spy_denoising(pred, x, weight=1.0):
        weights["fake"] = torch.as_tensor(weight).clone()
        return denoising_loss(pred, x, weight)

    losses.sfd_loss, losses.denoising_loss = spy_sfd, spy_denoising
    try:
        sfd.step(run, Draw(run.setup.accelerator, 8, 0, 0), 0)
    finally:
        losses.sfd_loss, losses.denoising_loss = sfd_loss, denoising_loss
    return run, seen, weights


def test_the_teacher_sees_the_override_and_the_fake_score_the_forgotten_label(digits_like_teacher, tmp_path):
    """Odd rows are forgotten: G samples them with the forgotten label, the fake score is trained on them and
    evaluated with it, the teacher is evaluated at the override; even rows are retained classes for all three."""
    _, seen, weights = _spied_step(digits_like_teacher, tmp_path, "loss.forget=[3]", "loss.override=[8]",
                                   "loss.remain_coef=0.5", "loss.forget_coef=0.25")
    labels = seen["generator"][0]
    odd = torch.arange(8) % 2 == 1
    assert (labels[odd] == 3).all() and not torch.isin(labels[~odd], torch.tensor([3])).any()
    fake_training, fake_in_g = seen["fake"]
    assert torch.equal(fake_training, labels) and torch.equal(fake_in_g, labels)
    teacher, = seen["teacher"]
    assert (teacher[odd] == 8).all() and torch.equal(teacher[~odd], labels[~odd])
    # each row its term's coefficient over its half of the batch
    torch.testing.assert_close(weights["generator"], torch.where(odd, 0.5, 1.0))


def test_the_fake_score_trains_on_forgotten_rows_with_their_coefficient(digits_like_teacher, tmp_path):
    """The fake score's denoising weight of a forgotten row is `fake_forget_coef` (x2, its half of the batch) times
    the time weight, a retained row's `fake_remain_coef` (x2): against the same step with both coefficients 1/2."""
    _, _, even = _spied_step(digits_like_teacher, tmp_path / "a", "loss.fake_remain_coef=0.5",
                             "loss.fake_forget_coef=0.5")
    _, _, uneven = _spied_step(digits_like_teacher, tmp_path / "b", "loss.fake_remain_coef=2.0",
                               "loss.fake_forget_coef=0.1")
    odd = torch.arange(8) % 2 == 1
    torch.testing.assert_close(uneven["fake"] / even["fake"], torch.where(odd, 0.1 / 0.5, 2.0 / 0.5))


def test_a_random_override_is_a_retained_class_per_row(digits_like_teacher, tmp_path):
    _, seen, _ = _spied_step(digits_like_teacher, tmp_path, "loss.forget=[3,5]", "loss.override=random")
    odd = torch.arange(8) % 2 == 1
    assert torch.isin(seen["generator"][0][odd], torch.tensor([3, 5])).all()
    teacher = seen["teacher"][0]
    assert not torch.isin(teacher, torch.tensor([3, 5])).any()


def test_the_student_card_states_what_was_forgotten(digits_like_teacher, tmp_path):
    from stepdistill.export.students import _card

    run = sfd.setup(quick.config("sfd", digits_like_teacher, tmp_path, "loss.forget=[1,3]", "loss.override=[7,8]"))
    student, = sfd.students(run)
    assert student.forgetting == {"form": "class", "forget": [1, 3], "override": [7, 8]}
    text = _card(student, {"extra": "## Training"})["extra"]
    assert "forget the classes 1, 3" in text and "7, 8 instead" in text and text.endswith("## Training")


def test_the_prompt_form_maps_a_concepts_prompts_to_override_prompts(tmp_path, monkeypatch):
    """The teacher's prompt for each forgotten prompt is the same prompt with the concept replaced (the official
    SD code's contexts_override); retained rows draw data.prompts."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    forget = tmp_path / "forget.txt"
    forget.write_text("a photo of brad pitt\nBrad Pitt on a horse\n")
    run = sfd.setup(quick.config("sfd", "tiny-sd", tmp_path / "run", f"data.prompts={root}/assets/prompts/smoke.txt",
                                 "data.resolution=64", f"loss.forget_prompts={forget}", "loss.concept=brad pitt",
                                 "loss.override_concept=a middle aged man"))
    conditioner, forgetting = run.setup.conditioner, run.forgetting
    texts = [conditioner.text(int(i)) for i in forgetting.override]
    assert texts == ["a photo of a middle aged man", "a middle aged man on a horse"]
    labels = forgetting.labels(run, Draw(run.setup.accelerator, 6, 0, 0))
    odd = torch.arange(6) % 2 == 1
    assert (labels[~odd] < conditioner.num_classes).all()
    assert {conditioner.text(int(i)) for i in labels[odd]} <= {"a photo of brad pitt", "Brad Pitt on a horse"}
    teacher = forgetting.teacher(Draw(run.setup.accelerator, 6, 0, 0), labels)
    assert {conditioner.text(int(i)) for i in teacher[odd]} <= set(texts)
    assert sfd.students(run)[0].forgetting["override"] == texts


def test_override_prompts_map_line_by_line(tmp_path, monkeypatch):
    """`loss.override_prompts`: line i of the file is the teacher's prompt for forgotten prompt i."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "forget.txt").write_text("a red car\na red bus\n")
    (tmp_path / "override.txt").write_text("a blue car\na blue bus\n")
    run = sfd.setup(quick.config("sfd", "tiny-sd", tmp_path / "run", f"data.prompts={root}/assets/prompts/smoke.txt",
                                 "data.resolution=64", f"loss.forget_prompts={tmp_path / 'forget.txt'}",
                                 f"loss.override_prompts={tmp_path / 'override.txt'}"))
    conditioner, forgetting = run.setup.conditioner, run.forgetting
    assert [conditioner.text(int(i)) for i in forgetting.forget] == ["a red car", "a red bus"]
    assert [conditioner.text(int(i)) for i in forgetting.override] == ["a blue car", "a blue bus"]


# -- the exact 2-D teacher --------------------------------------------------------------------------------------

class _Conditional(nn.Module):
    """An MLP of (input, one-hot label[, log-SNR]): the toy conditional generator or fake score."""

    def __init__(self, k, extra=0, skip=False):
        super().__init__()
        self.k, self.skip = k, skip
        self.f = nn.Sequential(nn.Linear(2 + k + extra, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                               nn.Linear(128, 2))

    def forward(self, x, labels, *extra):
        return self.f(torch.cat([x, nn.functional.one_hot(labels, self.k).float(), *extra], 1))


@pytest.mark.slow
def test_sfd_moves_the_forgotten_components_mass_onto_the_override_on_toy2d():
    """A conditional generator on the exact 4-component mixture, trained from scratch with SFD's two terms (the
    teacher at the override on forgotten rows; the fake score on both kinds, each with its coefficient): asked for
    component 0 it lands on component 2's mean; the retained components stay their own."""
    from toy2d_training import SCHEDULE
    from stepdistill.data.toy2d import GaussianMixture, GaussianMixtureDenoiser
    from stepdistill.time_sampling import DiscreteRange, UniformTime

    torch.manual_seed(0)
    mixture = GaussianMixture(4, std=0.1)
    teacher = GaussianMixtureDenoiser(mixture, SCHEDULE)
    gen, fake_net = _Conditional(4), _Conditional(4, extra=1)

    def fake(x_t, t, labels):
        a, s = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
        return fake_net(x_t, labels, (2 * torch.log(a / s)).clamp(-20, 20)[:, None] / 10) + a[:, None] * x_t

    opt_g = torch.optim.Adam(gen.parameters(), 1e-3, betas=(0.0, 0.999))
    opt_f = torch.optim.Adam(fake_net.parameters(), 1e-3, betas=(0.0, 0.999))
    forget, override, batch = 0, 2, 256
    odd = torch.arange(batch) % 2 == 1
    weight = torch.where(odd, 2 * 1.0, 2 * 1.0)  # remain and forget coefficients 1 (the recipe's digits default)

    def rows():
        labels = torch.where(odd, forget, torch.randint(1, 4, (batch,)))
        return labels, torch.where(odd, override, labels)

    for _ in range(1500):
        labels, _ = rows()
        with torch.no_grad():
            x = gen(torch.randn(batch, 2), labels)
        t = UniformTime().sample(SCHEDULE, batch)
        snr = (SCHEDULE.alpha(t) / SCHEDULE.sigma(t)) ** 2
        loss = losses.denoising_loss(fake(SCHEDULE.add_noise(x, torch.randn_like(x), t), t, labels), x, snr * weight)
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()
        labels, teacher_labels = rows()
        x = gen(torch.randn(batch, 2), labels)
        t = DiscreteRange(0.02, 0.98).sample(SCHEDULE, batch)
        x_t = SCHEDULE.add_noise(x, torch.randn_like(x), t)
        fake_net.requires_grad_(False)
        loss = losses.sfd_loss(x, teacher(x_t, t, class_labels=teacher_labels), fake(x_t, t, labels), weight, 1.2)
        opt_g.zero_grad()
        loss.backward()
        fake_net.requires_grad_(True)
        opt_g.step()
    with torch.no_grad():
        for c in range(4):
            samples = gen(torch.randn(2000, 2, generator=torch.Generator().manual_seed(c)), torch.full((2000,), c))
            nearest = torch.cdist(samples.double(), mixture.means).argmin(1)
            want = override if c == forget else c
            assert float((nearest == want).float().mean()) > 0.95, (c, nearest.bincount(minlength=4))
