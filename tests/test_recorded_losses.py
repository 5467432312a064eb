"""Recipe regression (torchtune's recorded-loss test): a short seeded run of each recipe on the tiny
digits-shaped teacher must log the losses recorded here, step by step.

Every step's draws are seeded, so the logged losses are a fingerprint of the recipe's wiring: which
prediction feeds which loss, signs, weights, detaches, noise scales and the optimiser updates between
steps. A change that alters behaviour moves them; a refactor must not. To re-record after an intended
change: `PYTHONPATH=recipes python tests/test_recorded_losses.py` prints the new table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
from registry import RECIPES  # noqa: E402

STEPS = 4
COMMON = [*quick.OVERRIDES, "train.checkpoint_every=1000", f"train.max_steps={STEPS}", "export.enabled=false"]
# recipe -> (extra overrides, the logged keys compared)
RUNS = {
    "dmd2": (["optim.update_ratio=2"], ("loss_fake", "loss_d", "loss_dm", "loss_g_gan")),
    # the official order: the generator first, the fake score on its detached samples
    "dmd2:shared": (["optim.update_ratio=2", "loss.fake_samples=shared"], ("loss_fake", "loss_d", "loss_dm", "loss_g_gan")),
    "sid": ([], ("loss_fake", "loss_g")),
    # SiD-LSG's choices: two batches a step, eps-MSE fake loss (the tiny teacher is v-prediction), U[20, 980)
    "sid:official": (["loss.fake_samples=fresh", "loss.fake_weighting=eps", "loss.fake_times=index"],
                     ("loss_fake", "loss_g")),
    "sim": ([], ("loss_fake", "loss_g")),
    # VSD's logged loss, 0.5 mean(grad^2), is blind to the gradient's sign: a generator rate 80x the default
    # makes the direction of each update show in the next steps' losses.
    "swiftbrush": (["optim.lr_generator=1e-3"], ("loss_vsd", "loss_lora")),
    "consistency_distill": ([], ("loss",)),
    # LCM's guidance, a w per sample from [2, 3]
    "consistency_distill:guided": (["loss.w_min=2", "loss.w_max=3"], ("loss",)),
    # MLCM: 4 then 2 segments on teacher trajectories; a batch of 16 meets segment edges every step
    "consistency_distill:mlcm": (["loss.segments=[4,2]", "loss.states=teacher", "loss.trajectories=16",
                                  "train.batch_size=16"], ("loss", "segments")),
    # the online target: the student itself under no_grad (LCM's target_decay 0)
    "consistency_distill:online": (["loss.target=online"], ("loss",)),
    # a two-step generator trained every step from backward-simulated inputs
    "dmd2:multistep": (["optim.update_ratio=1", "model.generator_timesteps=[999,499]"],
                       ("loss_fake", "loss_d", "loss_dm", "loss_g_gan", "backsim_step")),
    # half-width students: two steps of teacher score matching, then DMD2's
    "msd:tsm": (["model.students=2", "optim.update_ratio=2", "model.student_width=0.5", "model.tsm_steps=2"],
                ("loss_tsm", "loss_fake", "loss_dm")),
    "ect": ([], ("loss",)),
    # BOOT's bootstrapping loss, one step and a 2-step student (its segments carried by the student's DDIM jumps)
    "boot": ([], ("loss",)),
    "boot:segments": (["model.steps=2", "loss.levels=8"], ("loss",)),
    # SFD: SiD on retained and forgotten rows (forget 3, the teacher at 8)
    "sfd": ([], ("loss_fake", "loss_g")),
    # two students of 2 samples each, DMD2's steps on their halves of the classes; then one shared fake score
    "msd": (["model.students=2", "optim.update_ratio=2"], ("loss_fake", "loss_d", "loss_dm", "loss_g_gan")),
    "msd:shared": (["model.students=2", "optim.update_ratio=2", "model.fake_score=shared"],
                   ("loss_fake", "loss_d", "loss_dm", "loss_g_gan")),
    # iCT from fresh weights (seed 3: seed 0 redraws the tiny teacher's own), dropout replayed in the target
    "ect:ict": (["model.init=scratch", "loss.schedule=ict", "model.boundary=lcm", "loss.huber_c=null",
                 "model.dropout=0.2", "train.seed=3"], ("loss",)),
    # on the tiny x4 SR teacher: regression, HSD and the time-aware GAN; a generator rate that makes each
    # update's direction show in the next steps' losses
    "tadsr": (["data.patches=32", "loss.regression_pairs=8", "loss.regression_nfe=4", "optim.lr_generator=1e-3"],
              ("loss_reg", "loss_hsd", "loss_g_gan", "loss_d")),
    # on the tiny x2 SR teacher: the x4 student regresses its predictions
    "yonos": (["data.patches=32", "optim.lr=1e-3"], ("loss",)),
}
# the teacher each recipe runs on (build_teachers): the tiny digits-shaped one unless named here
TEACHERS = {name: info.tiny_teacher for name, info in RECIPES.items()}
# Recorded on CPU (float32). The tolerance absorbs BLAS summation order across machines, not wiring.
RECORDED: dict[str, list[dict[str, float]]] = {
    "tadsr": [
        {"loss_reg": 0.451869, "loss_hsd": 0.0451311, "loss_g_gan": 0.182612, "loss_d": 1.92921},
        {"loss_reg": 0.404034, "loss_hsd": 0.0312757, "loss_g_gan": -0.128593, "loss_d": 2.07015},
        {"loss_reg": 0.402591, "loss_hsd": 0.0200102, "loss_g_gan": 0.216009, "loss_d": 2.53452},
        {"loss_reg": 0.373783, "loss_hsd": 0.0211964, "loss_g_gan": 0.326423, "loss_d": 1.97615},
    ],
    "yonos": [
        {"loss": 0.006793},
        {"loss": 0.0207413},
        {"loss": 0.010328},
        {"loss": 0.0120674},
    ],
    "consistency_distill": [
        {"loss": 0.00116938},
        {"loss": 0.000799991},
        {"loss": 0.00100754},
        {"loss": 0.000782807},
    ],
    "consistency_distill:guided": [
        {"loss": 0.00135764},
        {"loss": 0.000924032},
        {"loss": 0.00116525},
        {"loss": 0.000896438},
    ],
    "consistency_distill:mlcm": [
        {"loss": 5.76996e-05, "segments": 4.0},
        {"loss": 6.57965e-05, "segments": 4.0},
        {"loss": 0.000261211, "segments": 2.0},
        {"loss": 0.000160839, "segments": 2.0},
    ],
    "consistency_distill:online": [
        {"loss": 0.00116938},
        {"loss": 0.00115241},
        {"loss": 0.00111092},
        {"loss": 0.0010287},
    ],
    "dmd2:multistep": [
        {"loss_fake": 0.600911, "loss_d": 1.33539, "loss_dm": 0.000603304, "loss_g_gan": 0.536288, "backsim_step": 0.0},
        {"loss_fake": 0.577163, "loss_d": 1.46662, "loss_dm": 0.00233518, "loss_g_gan": 0.539325, "backsim_step": 1.0},
        {"loss_fake": 0.442121, "loss_d": 1.29331, "loss_dm": 0.00371538, "loss_g_gan": 0.530157, "backsim_step": 1.0},
        {"loss_fake": 0.448124, "loss_d": 1.29481, "loss_dm": 0.00454962, "loss_g_gan": 0.630244, "backsim_step": 0.0},
    ],
    "msd:tsm": [
        {"loss_tsm": 0.211043},
        {"loss_tsm": 0.184316},
        {"loss_fake": 0.697735, "loss_dm": 0.00103284},
        {"loss_fake": 0.442159},
    ],
    "dmd2": [
        {"loss_fake": 0.639713, "loss_d": 1.3054, "loss_dm": 0.000518675, "loss_g_gan": 0.557083},
        {"loss_fake": 0.306031, "loss_d": 1.40448},
        {"loss_fake": 0.337756, "loss_d": 1.36, "loss_dm": 0.00123645, "loss_g_gan": 0.609152},
        {"loss_fake": 0.457372, "loss_d": 1.31132},
    ],
    "dmd2:shared": [
        {"loss_fake": 0.429372, "loss_d": 1.32653, "loss_dm": 3.54027e-14, "loss_g_gan": 0.526599},
        {"loss_fake": 0.307708, "loss_d": 1.40958},
        {"loss_fake": 0.464389, "loss_d": 1.34605, "loss_dm": 0.00116551, "loss_g_gan": 0.549217},
        {"loss_fake": 0.457745, "loss_d": 1.30615},
    ],
    "ect": [
        {"loss": 16.8785},
        {"loss": 12.1276},
        {"loss": 8.13896},
        {"loss": 15.6661},
    ],
    "ect:ict": [
        {"loss": 9.28672},
        {"loss": 9.47168},
        {"loss": 9.55136},
        {"loss": 13.6399},
    ],
    "msd": [
        {"loss_fake": 0.986528, "loss_d": 1.40003, "loss_dm": 0.000648625, "loss_g_gan": 0.732289},
        {"loss_fake": 0.73279, "loss_d": 1.31586},
        {"loss_fake": 0.795602, "loss_d": 1.45071, "loss_dm": 0.00331532, "loss_g_gan": 0.615534},
        {"loss_fake": 0.502849, "loss_d": 1.25844},
    ],
    "msd:shared": [
        {"loss_fake": 0.986528, "loss_d": 1.37891, "loss_dm": 0.000295507, "loss_g_gan": 0.587395},
        {"loss_fake": 0.732401, "loss_d": 1.36644},
        {"loss_fake": 0.793196, "loss_d": 1.37159, "loss_dm": 0.00318243, "loss_g_gan": 0.578886},
        {"loss_fake": 0.499782, "loss_d": 1.23173},
    ],
    "sid": [
        {"loss_fake": 0.548671, "loss_g": 0.00210387},
        {"loss_fake": 0.500419, "loss_g": 0.00109716},
        {"loss_fake": 0.453435, "loss_g": 0.00401944},
        {"loss_fake": 0.464852, "loss_g": 0.00512978},
    ],
    "sid:official": [
        {"loss_fake": 0.598839, "loss_g": 0.00193875},
        {"loss_fake": 0.346367, "loss_g": 0.00231568},
        {"loss_fake": 0.636649, "loss_g": 0.00402984},
        {"loss_fake": 0.0912446, "loss_g": 0.00163634},
    ],
    "boot": [
        {"loss": 0.0439027},
        {"loss": 0.0132218},
        {"loss": 0.00638982},
        {"loss": 0.0195701},
    ],
    "boot:segments": [
        {"loss": 0.0274161},
        {"loss": 0.0934416},
        {"loss": 0.0438652},
        {"loss": 0.0321681},
    ],
    "sfd": [
        {"loss_fake": 1.59969, "loss_g": -0.00461764},
        {"loss_fake": 0.720864, "loss_g": 0.00695596},
        {"loss_fake": 1.06665, "loss_g": -0.0163901},
        {"loss_fake": 1.15356, "loss_g": 0.0018203},
    ],
    "sim": [
        {"loss_fake": 0.548671, "loss_g": 1.84714},
        {"loss_fake": 0.500394, "loss_g": 0.867259},
        {"loss_fake": 0.453475, "loss_g": 1.82327},
        {"loss_fake": 0.464785, "loss_g": 2.4633},
    ],
    "swiftbrush": [
        {"loss_vsd": 0.0, "loss_lora": 0.416451},
        {"loss_vsd": 2.12851e-06, "loss_lora": 0.287707},
        {"loss_vsd": 8.37611e-06, "loss_lora": 0.645916},
        {"loss_vsd": 1.15239e-05, "loss_lora": 0.650486},
    ],
}
RTOL = 2e-3


def build_teachers(root: Path) -> dict[str, Path]:
    """The tiny teachers the runs use (the digits-shaped one is what the `digits_like_teacher` fixture builds)."""
    from stepdistill.tiny import build_tiny_class_conditional, build_tiny_super_resolution

    return {"digits": build_tiny_class_conditional(root / "teacher"), "sr": build_tiny_super_resolution(root / "sr"),
            "sr-x2": build_tiny_super_resolution(root / "sr_x2", scale=2)}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return build_teachers(tmp_path_factory.mktemp("teachers"))


def run_recipe(name: str, teachers: dict[str, Path], out: Path) -> list[dict[str, float]]:
    from stepdistill.config import apply_overrides

    recipe = name.split(":")[0]  # "recipe:variant"
    teacher = teachers[TEACHERS[recipe]]
    module = RECIPES[recipe].module()
    config = RECIPES[recipe].config_class()
    extra, keys = RUNS[name]
    cfg = apply_overrides(config(), [f"model.teacher={teacher}", f"train.output_dir={out}", *COMMON, *extra])
    module.main(cfg)
    logs = [json.loads(line) for line in (out / "log_rank0.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in keys if k in row} for row in logs]


def test_every_registered_recipe_has_a_recorded_run():
    assert {name.split(":")[0] for name in RUNS} == set(RECIPES) == {name.split(":")[0] for name in RECORDED}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_short_run_logs_the_recorded_losses(name, teachers, tmp_path):
    logged = run_recipe(name, teachers, tmp_path)
    recorded = RECORDED[name]
    assert [sorted(r) for r in logged] == [sorted(r) for r in recorded]
    for step, (got, want) in enumerate(zip(logged, recorded)):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=RTOL, abs=1e-10), f"{name} step {step} {key}"


if __name__ == "__main__":  # re-record: prints the RECORDED table for this file
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        built = build_teachers(Path(tmp))
        table = {}
        for name in sorted(RUNS):
            torch.manual_seed(0)  # as the autouse seed fixture does
            table[name] = [{k: float(f"{v:.6g}") for k, v in row.items()}
                           for row in run_recipe(name, built, Path(tmp) / name)]
        print("RECORDED = " + json.dumps(table, indent=4))
