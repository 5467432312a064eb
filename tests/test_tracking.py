"""What a run sends to TensorBoard, read back from its event file: the validation prompts' sample grid as an image
every `sample_every` steps, and the losses with the rates, gradient norms, speed and memory every `log_every`."""
from __future__ import annotations

import pytest
import torch


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.glob("events.out.tfevents.*"))  # the run's (its hparams go to a sub-folder)
    assert len(files) == 1, f"event files in {folder}: {files}"
    accumulator = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_gets_the_validation_grid_and_the_scalars(tmp_path, fresh_accelerate_state):
    import dmd2
    import quick

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\na green triangle\n")
    out = tmp_path / "run"
    cfg = quick.config("dmd2", "tiny-sd", out, f"data.prompts={prompts}", "loss.gan=false", "train.batch_size=2",
                       "train.max_steps=2", "train.sample_every=1", "train.report_to=tensorboard",
                       "train.project=tracked", "train.validation_prompts=[a cat on a mat,a lighthouse]",
                       "export.enabled=false", "optim.update_ratio=1")
    dmd2.main(cfg)
    events = _events(out / "tracked")
    images = events.Images("samples")
    assert [e.step for e in images] == [1, 2]
    from io import BytesIO

    from PIL import Image

    grid = Image.open(BytesIO(images[0].encoded_image_string))
    columns = grid.width // (grid.height // 8)  # 8 rows of square samples: one column per validation prompt
    assert columns == 2, grid.size
    scalars = set(events.Tags()["scalars"])
    for key in ("loss_dm", "loss_fake", "lr_generator", "lr_fake_score", "grad_norm_generator", "images_per_second",
                "peak_memory_mib"):
        assert key in scalars, (key, sorted(scalars))
    assert [e.step for e in events.Scalars("loss_dm")] == [1, 2]
    # the grid's columns are the validation prompts, beyond the prompts the generator draws
    saved = Image.open(out / "samples" / "step_00000002.png")
    assert saved.size == grid.size


def test_validation_keys_are_checked_before_training(tmp_path, fresh_accelerate_state):
    from types import SimpleNamespace

    from stepdistill.conditioning import ClassConditioner
    from stepdistill.training.final import validation_columns

    classes = ClassConditioner(10)
    train = SimpleNamespace(validation_prompts=(), validation_labels=(3, 7))
    assert validation_columns(train, classes).tolist() == [3, 7]
    assert validation_columns(SimpleNamespace(validation_prompts=(), validation_labels=()), classes) is None
    with pytest.raises(ValueError, match="12 is not a class of this teacher"):
        validation_columns(SimpleNamespace(validation_prompts=(), validation_labels=(1, 12)), classes)
    with pytest.raises(ValueError, match="applies to text-to-image teachers"):
        validation_columns(SimpleNamespace(validation_prompts=("a cat",), validation_labels=()), classes)
    with pytest.raises(ValueError, match="not both"):
        validation_columns(SimpleNamespace(validation_prompts=("a",), validation_labels=(1,)), classes)
    assert torch.is_tensor(validation_columns(train, classes))
