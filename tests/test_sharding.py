"""`stepdistill.sharding` on a one-process gloo group (FSDP2 shards, gathers and frees weights there as on N): the
bottleneck features' backward through a sharded, frozen network, the whole-weight checkpoint state of roles,
optimisers and EMA, the gathered student. tests/test_fsdp.py runs the recipes sharded over 2 processes."""

import copy

import pytest
import torch
import torch.distributed as dist

from stepdistill import sharding
from stepdistill.networks import trainable
from stepdistill.roles import Generator, make_fake_score, make_generator
from stepdistill.student import Student
from stepdistill.teachers import load_teacher
from stepdistill.training.ema import ShardedEMA


@pytest.fixture
def group(tmp_path):
    """A one-process gloo group for the test, gone after it (accelerate's own state never sees it)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def teacher(digits_like_teacher):
    return load_teacher(digits_like_teacher)


def _inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.full((n,), 400.0), torch.randint(0, 10, (n,), generator=g)


def _bottleneck_backward(rank: int, teacher_dir: str, store: str) -> None:
    """One of 2 processes: x's gradient through the frozen fake score's bottleneck, sharded and whole."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        plain = make_fake_score(load_teacher(teacher_dir))
        sharded = copy.deepcopy(plain)
        sharding.shard_roles(sharded)
        x, t, labels = _inputs()
        grads = []
        for fake in (plain, sharded):
            xg = x.clone().requires_grad_(True)
            with trainable(fake, False):  # DMD2's generator phase
                with torch.no_grad():  # the distribution-matching pass, which reshards the weights after it
                    fake(x, t, class_labels=labels)
                features = fake.features(xg, t, class_labels=labels)
                # the GAN weight's balance differentiates the graph once before the update's backward
                balance, = torch.autograd.grad(features.sum(), xg, retain_graph=True)
                features.square().sum().backward()
            grads += [balance, xg.grad]
        torch.testing.assert_close(grads[2], grads[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[3], grads[1], rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_a_sharded_frozen_networks_bottleneck_backpropagates_as_the_whole_one(digits_like_teacher, tmp_path):
    """DMD2's generator GAN loss: gradients reach x through the frozen fake score's bottleneck only, twice with the
    GAN weight's balance. Sharded over 2 processes, the network's own weights must be gathered again for the second
    backward (its final output joins the graph); stopped at the bottleneck, they are freed after the first."""
    import torch.multiprocessing as mp

    mp.spawn(_bottleneck_backward, args=(str(digits_like_teacher), str(tmp_path / "store")), nprocs=2)


def test_sharded_roles_and_their_optimiser_checkpoint_whole_and_load_back(teacher, group):
    gen = make_generator(teacher)
    sharding.shard_roles(gen)
    opt = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-3)
    z, _, labels = _inputs()
    gen(z, class_labels=labels).square().mean().backward()
    opt.step()
    state = sharding.ShardedState([gen], [opt]).state_dict()
    whole = gen.net.state_dict()
    assert all(not sharding.is_sharded_tensor(v) for v in state["model"].values())
    for k, v in whole.items():  # the checkpoint holds every weight whole, under the role's names
        torch.testing.assert_close(state["model"][f"0.denoiser.net.{k}"], sharding.full(v), rtol=0, atol=0)
    adam = state["optimizers"][0]["state"]
    assert len(adam) == len(whole) and all(not sharding.is_sharded_tensor(s["exp_avg"]) for s in adam.values())
    saved = copy.deepcopy(state)
    gen(z, class_labels=labels).sum().backward()  # a later step's weights and moments, then the checkpoint back
    opt.step()
    sharding.ShardedState([gen], [opt]).load_state_dict(copy.deepcopy(saved))  # torch shards the dict it is given
    again = sharding.ShardedState([gen], [opt]).state_dict()
    for k, v in saved["model"].items():
        torch.testing.assert_close(again["model"][k], v, rtol=0, atol=0)
    for k, s in saved["optimizers"][0]["state"].items():
        torch.testing.assert_close(again["optimizers"][0]["state"][k]["exp_avg"], s["exp_avg"], rtol=0, atol=0)


def test_the_ema_of_sharded_weights_checkpoints_whole_and_loads_back_sharded(teacher, group):
    gen = make_generator(teacher)
    sharding.shard_roles(gen)
    params = [p for p in gen.parameters() if p.requires_grad]
    ema = ShardedEMA(params, decay=0.9)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    ema.step(params)  # diffusers' warm-up: the first step copies the weights
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    ema.step(params)
    assert all(sharding.is_sharded_tensor(s) for s in ema.shadow_params)
    shadows = [sharding.full(s).detach().clone() for s in ema.shadow_params]
    state = ema.state_dict()
    assert all(not sharding.is_sharded_tensor(s) for s in state["shadow_params"])  # whole, for rank 0 to write
    for saved, shadow in zip(state["shadow_params"], shadows):
        torch.testing.assert_close(saved, shadow, rtol=0, atol=0)
    other = ShardedEMA(params, decay=0.9)  # shadows = the weights now (start + 1), then the checkpoint's
    other.load_state_dict(copy.deepcopy(state))
    assert all(sharding.is_sharded_tensor(s) for s in other.shadow_params)  # sharded as the weights are
    assert other.optimization_step == ema.optimization_step
    for loaded, shadow in zip(other.shadow_params, shadows):
        torch.testing.assert_close(sharding.full(loaded), shadow, rtol=0, atol=0)
    assert float((shadows[0] - sharding.full(params[0])).abs().max()) > 0.01  # differs from the weights


def test_a_sharded_student_is_gathered_whole_with_its_ema_for_evaluation_and_export(teacher, group):
    from accelerate import Accelerator

    gen = make_generator(teacher)
    reference = copy.deepcopy(gen)
    sharding.shard_roles(gen)
    params = [p for p in gen.parameters() if p.requires_grad]
    ema = ShardedEMA(params, decay=0.5)
    for _ in range(2):  # diffusers' warm-up copies the weights at the first step, averages from the second
        with torch.no_grad():
            for p in params:
                p.add_(0.25)
        ema.step(params)
    names = [n for n, p in gen.named_parameters() if p.requires_grad]
    averaged = {n: sharding.full(s).detach().clone() for n, s in zip(names, ema.shadow_params)}
    trained = {n: sharding.full(p).detach().clone() for n, p in zip(names, params)}
    assert all(float((averaged[n] - trained[n]).abs().max()) > 0.01 for n in names)
    student = Student(generator=gen, conditioner=None, schedule=teacher.schedule, sampler=None, space=None,
                      shape=(1, 16, 16), teacher=teacher, ema=ema)
    weights = student.state_dict()  # what checkpoints keep: whole tensors, the EMA's
    for n in names:
        torch.testing.assert_close(weights[n], averaged[n], rtol=0, atol=0)
    whole = student.unwrapped(Accelerator(cpu=True)).generator
    assert isinstance(whole, Generator) and not sharding.is_sharded(whole)
    assert not any(sharding.is_sharded_tensor(p) for p in whole.parameters())
    for n, p in whole.named_parameters():
        torch.testing.assert_close(p.detach(), averaged[n], rtol=0, atol=0)
    z, _, labels = _inputs()
    with torch.no_grad():  # the gathered network computes what the same weights do in a network never sharded
        for (n, p) in reference.named_parameters():
            p.copy_(averaged[n])
        torch.testing.assert_close(whole(z, class_labels=labels), reference(z, class_labels=labels))


def test_lora_roles_are_refused(teacher, group):
    fake = make_fake_score(teacher, lora_rank=4)
    with pytest.raises(ValueError, match="LoRA"):
        sharding.shard_roles(fake)


def test_accelerates_fsdp_wraps_a_roles_blocks_as_it_wraps_its_networks(tiny_cond_unet):
    """On GPUs accelerate shards the prepared role itself (`recipes/accelerate/fsdp.yaml`: transformer-based wrap):
    the role names its network's blocks, so each block is a unit rather than the whole role one."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from stepdistill.denoiser import Denoiser
    from stepdistill.schedules import VPDiscrete

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            cpu_ram_efficient_loading=False)
    role = Generator(Denoiser(tiny_cond_unet, VPDiscrete(torch.linspace(0.99, 0.01, 1000)), "epsilon"), 999)
    units = lambda module: [m for m in module.modules() if fsdp2_prepare_auto_wrap_policy(plugin, module)(m)]
    assert units(role) and units(role) == units(tiny_cond_unet)
