"""Tests for stepdistill.config: typed dataclass configs, YAML presets, strict dotted overrides."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from stepdistill.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


@dataclass
class Train:
    batch_size: int = 8
    lr: float = 1e-4
    max_steps: int = field(default=1000, metadata={"help": "generator updates"})
    mixed_precision: bool = False
    resume: str | None = None
    out_dir: Path = Path("runs/demo")
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Model:
    kind: Literal["unet", "dit"] = "unet"
    num_heads: Literal[1, 2, 4] = 1
    channels: list[int] = field(default_factory=lambda: [32, 64])
    sizes: tuple[int, ...] = (16,)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"dmd": 1.0})
    dropout: Optional[float] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    name: str = "demo"
    seed: int = 0
    teacher: Optional[Path] = field(default=None, metadata={"help": "hub id or local folder"})
    train: Train = field(default_factory=Train)
    model: Model = field(default_factory=Model)


@dataclass
class NeedsValue:
    steps: int


def write_yaml(tmp_path: Path, data, name: str = "preset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def raises(match_all: list[str], fn, *args):
    """Call fn and assert it raises ConfigError whose message contains every string."""
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- defaults and presets


def test_defaults():
    cfg = load_config(Config, [])
    assert cfg == Config()
    assert isinstance(cfg.train.betas, tuple) and isinstance(cfg.train.out_dir, Path)


def test_yaml_preset(tmp_path):
    path = write_yaml(tmp_path, {"name": "sd15", "train": {"lr": "1e-5", "max_steps": 50},
                                 "model": {"channels": [8, 16, 16], "sizes": [4, 8]}})
    cfg = load_config(Config, ["--config", str(path)])
    assert cfg.name == "sd15"
    assert cfg.train.lr == pytest.approx(1e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 50
    assert cfg.train.batch_size == 8  # untouched keys keep defaults
    assert cfg.model.channels == [8, 16, 16] and cfg.model.sizes == (4, 8)
    assert load_config(Config, [f"--config={path}"]) == cfg


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(Config, ["--config", str(write_yaml(tmp_path, ""))]) == Config()


def test_precedence_cli_beats_yaml_beats_defaults(tmp_path):
    path = write_yaml(tmp_path, {"seed": 1, "train": {"max_steps": 50, "batch_size": 4}})
    cfg = load_config(Config, ["train.max_steps=7", "--config", str(path)])
    assert cfg.train.max_steps == 7  # CLI
    assert cfg.train.batch_size == 4 and cfg.seed == 1  # YAML
    assert cfg.train.lr == 1e-4  # default


# ---------------------------------------------------------------- overrides of every type


@pytest.mark.parametrize("override, attr, expected", [
    ("seed=3", "seed", 3),
    ("name=007", "name", "007"),
    ("name=null", "name", "null"),
    ("train.lr=3e-4", "train.lr", 3e-4),
    ("train.lr=2", "train.lr", 2.0),
    ("train.max_steps=1e3", "train.max_steps", 1000),
    ("train.mixed_precision=true", "train.mixed_precision", True),
    ("train.mixed_precision=YES", "train.mixed_precision", True),
    ("train.mixed_precision=0", "train.mixed_precision", False),
    ("train.mixed_precision=No", "train.mixed_precision", False),
    ("train.resume=latest", "train.resume", "latest"),
    ("train.resume=None", "train.resume", None),
    ("train.out_dir=/tmp/run 1", "train.out_dir", Path("/tmp/run 1")),
    ("train.betas=[0.5, 0.9]", "train.betas", (0.5, 0.9)),
    ("teacher=assets/digits", "teacher", Path("assets/digits")),
    ("teacher=null", "teacher", None),
    ("model.kind=dit", "model.kind", "dit"),
    ("model.num_heads=4", "model.num_heads", 4),
    ("model.channels=[32,64,64]", "model.channels", [32, 64, 64]),
    ("model.sizes=[1,2,3]", "model.sizes", (1, 2, 3)),
    ("model.loss_weights={dmd: 2, gan: 0.01}", "model.loss_weights", {"dmd": 2.0, "gan": 0.01}),
    ("model.dropout=0.1", "model.dropout", 0.1),
    ("model.dropout=null", "model.dropout", None),
    ("model.tags=[a, b]", "model.tags", ["a", "b"]),
])
def test_override_types(override, attr, expected):
    cfg = apply_overrides(Config(), [override])
    value = cfg
    for part in attr.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_override_section_mapping_updates_only_named_keys():
    cfg = apply_overrides(Config(), ["train={lr: 0.5}"])
    assert cfg.train.lr == 0.5 and cfg.train.max_steps == 1000


@dataclass
class Recipe:
    train: Train = field(default_factory=lambda: Train(max_steps=7, out_dir=Path("runs/recipe")))


def test_override_keeps_the_recipe_section_defaults(tmp_path):
    """A recipe's section default (here `max_steps` 7, not Train's 1000) survives overrides and presets
    that name other keys of that section."""
    cfg = load_config(Recipe, ["train.lr=0.5"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.out_dir) == (0.5, 7, Path("runs/recipe"))
    cfg = load_config(Recipe, ["--config", str(write_yaml(tmp_path, {"train": {"batch_size": 2}}))])
    assert (cfg.train.batch_size, cfg.train.max_steps) == (2, 7)
    assert apply_overrides(Recipe(), ["train={lr: 0.5}"]).train.max_steps == 7


def test_cli_forms():
    expected = apply_overrides(Config(), ["train.max_steps=100", "train.resume=latest"])
    for argv in (["train.max_steps=100", "train.resume=latest"],
                 ["--train.max_steps=100", "--train.resume=latest"],
                 ["--train.max_steps", "100", "--train.resume", "latest"]):
        assert load_config(Config, argv) == expected
    assert load_config(Config, ["--train.lr", "-1"]).train.lr == -1.0  # negative value, not an option


def test_later_override_wins():
    assert load_config(Config, ["seed=1", "seed=2"]).seed == 2


def test_apply_overrides_does_not_mutate_input():
    cfg = Config()
    before = copy.deepcopy(cfg)
    out = apply_overrides(cfg, ["train.max_steps=5", "model.channels=[1]"])
    assert cfg == before and out.train.max_steps == 5 and out is not cfg


# ---------------------------------------------------------------- errors


def test_unknown_key_suggests_closest():
    raises(["'train.max_stepz'", "valid keys in 'train'", "batch_size, betas, lr, max_steps",
            "did you mean 'max_steps'?"], apply_overrides, Config(), ["train.max_stepz=3"])
    raises(["'sede'", "model, name, seed", "did you mean 'seed'?"], load_config, Config, ["--sede", "1"])


def test_unknown_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path, {"model": {"kinds": "dit"}})
    raises(["'model.kinds'", "valid keys in 'model'", "did you mean 'kind'?"], load_config, Config, ["--config", str(path)])


def test_wrong_type():
    raises(["config key 'train.lr' expects float, got 'abc'"], apply_overrides, Config(), ["train.lr=abc"])
    raises(["'train.max_steps' expects int", "1.5"], apply_overrides, Config(), ["train.max_steps=1.5"])
    raises(["'model.channels[1]' expects int", "'x'"], apply_overrides, Config(), ["model.channels=[1, x]"])
    raises(["'train.betas' expects tuple[float, float]"], apply_overrides, Config(), ["train.betas=[1, 2, 3]"])
    raises(["'model.channels' expects list[int]"], apply_overrides, Config(), ["model.channels=3"])
    raises(["'train.batch_size' expects int"], apply_overrides, Config(), ["train.batch_size=null"])


def test_bool_int_are_not_interchangeable():
    raises(["'train.batch_size' expects int, got True"], from_dict, Config, {"train": {"batch_size": True}})
    raises(["'train.lr' expects float, got False"], from_dict, Config, {"train": {"lr": False}})
    raises(["'train.mixed_precision' expects bool, got 1"], from_dict, Config,
           {"train": {"mixed_precision": 1}})
    raises(["'train.mixed_precision' expects bool, got 'maybe'"], apply_overrides, Config(),
           ["train.mixed_precision=maybe"])


def test_literal_choice():
    raises(["config key 'model.kind' must be one of 'unet', 'dit'; got 'vit'"],
           apply_overrides, Config(), ["model.kind=vit"])
    raises(["'model.num_heads' must be one of 1, 2, 4; got 3"], apply_overrides, Config(), ["model.num_heads=3"])


def test_yaml_file_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    raises([str(missing), "does not exist"], load_config, Config, ["--config", str(missing)])
    broken = write_yaml(tmp_path, "train: {lr: [1,\n", "broken.yaml")
    raises([str(broken)], load_config, Config, ["--config", str(broken)])
    listed = write_yaml(tmp_path, [1, 2], "list.yaml")
    raises([str(listed), "mapping"], load_config, Config, ["--config", str(listed)])


def test_section_vs_scalar():
    raises(["config key 'train' is a section", "batch_size", "max_steps", "got 5"],
           apply_overrides, Config(), ["train=5"])
    raises(["config key 'train.lr' is a float, not a section", "'train.lr.x'"],
           apply_overrides, Config(), ["train.lr.x=1"])
    raises(["'train' is a section"], from_dict, Config, {"train": 3})
    raises(["'train.lr' expects float"], from_dict, Config, {"train": {"lr": {"x": 1}}})
    raises(["'model.tags.x'"], apply_overrides, Config(), ["model.tags.x=1"])


def test_bad_cli_tokens():
    raises(["'train.max_steps'", "needs a value"], load_config, Config, ["--train.max_steps"])
    raises(["key=value", "'seed'"], load_config, Config, ["seed"])
    raises(["'model.channels'", "cannot parse"], apply_overrides, Config(), ["model.channels=[1,"])


def test_required_field():
    raises(["'steps' is required"], from_dict, NeedsValue, {})
    assert load_config(NeedsValue, ["steps=3"]).steps == 3


# ---------------------------------------------------------------- round trips and help


def test_to_dict_from_dict_round_trip():
    cfg = apply_overrides(Config(), ["teacher=assets/x", "model.sizes=[1,2]", "train.resume=latest"])
    data = to_dict(cfg)
    assert data["teacher"] == "assets/x" and data["model"]["sizes"] == [1, 2]
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain, YAML-safe types
    assert from_dict(Config, data) == cfg


def test_save_then_load_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["name=007", "train.out_dir=runs/a", "model.kind=dit",
                                     "model.loss_weights={dmd: 1, gan: 0.5}", "train.mixed_precision=yes"])
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind
    assert load_config(Config, ["--config", str(path)]) == cfg
    save_config(apply_overrides(cfg, ["seed=9"]), path)  # overwrite in place
    assert load_config(Config, ["--config", str(path)]).seed == 9


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as info:
        load_config(Config, ["train.lr=1", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for key in ("name", "seed", "teacher", "train.max_steps", "train.betas", "model.kind", "model.loss_weights"):
        assert key in out
    assert "generator updates" in out and "hub id or local folder" in out and "1000" in out
    with pytest.raises(SystemExit):
        load_config(NeedsValue, ["-h"])
    assert "<required>" in capsys.readouterr().out


@dataclass
class Words:
    precision: Literal["no", "fp16", "bf16"] = "fp16"
    switch: bool = True
    output_dir: str = "outputs/run"
    weight: float = 1.0


def test_yaml_no_and_off_reach_text_keys_as_text_and_bool_keys_as_false(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("precision: no\nswitch: off\noutput_dir: ~/runs/a\n")
    cfg = load_config(Words, ["--config", str(path)])
    assert cfg.precision == "no" and cfg.switch is False
    assert cfg.output_dir == str(Path.home() / "runs" / "a")  # `~` expanded, as a shell would in front of a path
    assert load_config(Words, ["switch=on", "output_dir=~"]).switch is True
    assert load_config(Words, ["output_dir=~"]).output_dir == str(Path.home())
    assert load_config(Words, ["output_dir=a~b"]).output_dir == "a~b"


@pytest.mark.parametrize("value", [".inf", "-.inf", "nan", "inf", "1e999"])
def test_a_non_finite_value_is_refused_with_its_key(value):
    with pytest.raises(ConfigError, match="config key 'weight' must be a finite number"):
        load_config(Words, [f"weight={value}"])


def test_a_runs_config_with_its_resume_record_loads_as_a_preset(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("precision: bf16\nresumes:\n- step: 3\n  changed: {}\n")
    assert load_config(Words, ["--config", str(path)]).precision == "bf16"
