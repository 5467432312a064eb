"""The trio sharded with torch's FSDP2 (`fully_shard`) on CPU processes over gloo: a few DMD2 updates (distribution
matching + the GAN on the fake score's bottleneck, then the fake score's denoising + discriminator losses).

accelerate turns its FSDP configuration on only for GPU processes (a CPU launch becomes DDP), so this worker
shards the roles itself, per block as accelerate's transformer-based wrap does, to check what can be checked on
CPU: every role's network trains sharded, the bottleneck hook (which stops the network mid-forward) leaves FSDP's
state sound, and the sharded run matches one unsharded process on the same global batch.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py TEACHER OUT.safetensors
    python tests/fsdp_worker.py TEACHER OUT.safetensors          # the one-process reference
"""

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from stepdistill import losses
from stepdistill.discriminator import GANHead
from stepdistill.networks import trainable
from stepdistill.roles import make_fake_score, make_generator, make_real_score
from stepdistill.teachers import load_teacher

STEPS, BATCH = 3, 8


def shard(net: torch.nn.Module) -> None:
    """One FSDP unit per UNet block, then the rest of the network: how accelerate's transformer-based wrap
    splits a diffusers model (its `_no_split_modules` are the blocks)."""
    from torch.distributed.fsdp import fully_shard

    for block in [*net.down_blocks, net.mid_block, *net.up_blocks]:
        fully_shard(block)
    fully_shard(net)


def main(teacher_dir: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    teacher = load_teacher(teacher_dir)
    real, fake, gen = make_real_score(teacher), make_fake_score(teacher), make_generator(teacher)
    x_example = torch.zeros(2, 1, 16, 16)
    head = GANHead.for_denoiser(fake, x_example, 500.0, class_labels=torch.zeros(2, dtype=torch.long))
    if world > 1:
        shard(gen.net)
        shard(fake.net)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    opt_f = torch.optim.AdamW([*fake.parameters(), *head.parameters()], lr=1e-3)
    data = torch.Generator().manual_seed(1)
    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for _ in range(STEPS):
        z, labels = torch.randn(BATCH, 1, 16, 16, generator=data), torch.randint(0, 10, (BATCH,), generator=data)
        eps, t = torch.randn(BATCH, 1, 16, 16, generator=data), torch.randint(20, 980, (BATCH,), generator=data).float()
        real_images = torch.rand(BATCH, 1, 16, 16, generator=data) * 2 - 1
        z, labels, eps, t, real_images = z[mine], labels[mine], eps[mine], t[mine], real_images[mine]
        cond = {"class_labels": labels}
        # the generator: distribution matching and the GAN through the frozen fake score
        x = gen(z, **cond)
        x_t = teacher.schedule.add_noise(x.detach(), eps, t)
        with torch.no_grad():
            x0_real, x0_fake = real(x_t, t, **cond), fake(x_t, t, **cond)
        with trainable(fake, False), trainable(head, False):
            logits = head(fake.features(teacher.schedule.add_noise(x, eps, t), t, **cond))
            loss = losses.dmd_loss(x, x0_real, x0_fake) + 1e-2 * losses.generator_gan_loss(logits)
            opt_g.zero_grad()
            loss.backward()
        opt_g.step()
        # the fake score: denoising on the detached samples, the discriminator on real vs generated
        x_t = teacher.schedule.add_noise(x.detach(), eps, t)
        features = fake.features(torch.cat([teacher.schedule.add_noise(real_images, eps, t), x_t]),
                                 torch.cat([t, t]), class_labels=torch.cat([labels, labels]))
        logits_real, logits_fake = head(features).chunk(2)
        loss = losses.denoising_loss(fake(x_t, t, **cond), x.detach()) + \
            1e-2 * losses.discriminator_loss(logits_real, logits_fake)
        opt_f.zero_grad()
        loss.backward()
        if world > 1:  # the head is not sharded: average its gradients as DDP would
            for p in head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        opt_f.step()
    state = {f"generator.{k}": v for k, v in gen.net.state_dict().items()}
    state |= {f"fake_score.{k}": v for k, v in fake.net.state_dict().items()}
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().contiguous() for k, v in state.items()}
    if rank == 0:
        save_file(state, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
