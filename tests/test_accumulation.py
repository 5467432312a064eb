"""Gradient accumulation (`train.micro_batch_size`): a phase's micro-batches see exactly the rows of the draws the
whole batch would have, and their accumulated gradient is the whole batch's (the mean loss's, not the sum's)."""

import pytest
import torch
from accelerate import Accelerator

from stepdistill.training import Draw, TrainConfig, accumulate
from stepdistill.training.setup import check_train


def _draws(draw: Draw):
    return draw.randn(3), draw.rand(), draw.index(100), draw.integer(7)


def test_micro_views_replay_the_draws_and_take_their_own_rows():
    acc = Accelerator(cpu=True)
    whole = _draws(Draw(acc, 8, seed=1, step=5))
    split = Draw(acc, 8, seed=1, step=5, passes=4)
    views = [_draws(view) for view in split.micro_views()]
    for i, part in enumerate(whole[:3]):
        torch.testing.assert_close(torch.cat([v[i] for v in views]), part, rtol=0, atol=0)
    assert {v[3] for v in views} == {whole[3]}
    after = Draw(acc, 8, seed=1, step=5)
    _draws(after)
    assert torch.equal(split.randn(2), after.randn(2))  # the generator moved on as for one pass


def test_a_micro_batch_that_draws_more_than_the_first_is_refused():
    views = Draw(Accelerator(cpu=True), 4, seed=0, step=0, passes=2).micro_views()
    next(views).randn(1)
    second = next(views)
    second.randn(1)
    with pytest.raises(RuntimeError, match="drew more than the first"):
        second.randn(1)


def test_accumulated_gradients_are_the_whole_batch_s():
    acc = Accelerator(cpu=True)
    net = torch.nn.Linear(3, 2)

    def loss_fn(view, x):
        loss = (net(x) - view.randn(2)).square().mean()
        return loss, {"loss": loss.item()}, x.sum(1)

    x = torch.randn(8, 3)
    grads, logs = [], []
    for passes in (1, 4):
        net.zero_grad()
        logged, (aux,) = accumulate(Draw(acc, 8, seed=0, step=0, passes=passes), loss_fn, x)
        grads.append([p.grad.clone() for p in net.parameters()])
        logs.append(logged["loss"])
        torch.testing.assert_close(aux, x.sum(1))  # the micro-batches' outputs joined in order
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert logs[0] == pytest.approx(logs[1], rel=1e-6)


@pytest.mark.parametrize("micro,processes,ok", [(2, 1, True), (8, 2, False), (3, 1, False), (4, 2, True),
                                                (0, 1, False)])
def test_micro_batch_size_must_divide_each_process_s_share(micro, processes, ok):
    train = TrainConfig(batch_size=8, micro_batch_size=micro)
    if ok:
        check_train(train, processes)
        assert train.passes(processes) == 8 // processes // micro
    else:
        with pytest.raises(ValueError, match="train.micro_batch_size"):
            check_train(train, processes)
