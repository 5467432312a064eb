"""`stepdistill.adapters` switches peft's LoRA layers through two private attributes (`_disable_adapters`,
`_active_adapter`), which is why pyproject.toml bounds peft from above. This pins what those writes must mean
in the installed peft: its public view of each layer agrees, and the output is the named adapter's alone, so a
peft release that renames or reinterprets them fails here (`make test-latest`) before a user meets it."""

import torch
from torch import nn

from stepdistill.adapters import activate, add_lora


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))


def test_activate_is_what_peft_itself_reports_and_computes():
    from peft.tuners.lora import LoraLayer

    net = _net()
    x = torch.randn(3, 4)
    base = net(x)
    add_lora(net, "a", rank=2, target_modules=["0", "2"])
    add_lora(net, "b", rank=2, target_modules=["0", "2"])
    layers = [m for m in net.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2
    for name in ("a", "b"):  # B starts at zero: give each adapter an output of its own
        for layer in layers:
            nn.init.normal_(layer.lora_B[name].weight)
    outputs = {}
    for name in ("a", "b", None):
        activate(net, name)
        for layer in layers:  # peft's public properties read the same state
            assert layer.disable_adapters is (name is None)
            if name is not None:
                assert layer.active_adapters == [name]
        outputs[name] = net(x)
    torch.testing.assert_close(outputs[None], base)
    assert not torch.allclose(outputs["a"], outputs["b"]) and not torch.allclose(outputs["a"], base)
    for layer in layers:  # only the active adapter's weights act: switching the other off changes nothing
        layer.lora_B["b"].weight.data.zero_()
    activate(net, "a")
    torch.testing.assert_close(net(x), outputs["a"])
