"""Which feature space resolves gaps near the teacher: candidate spaces for the digits benchmark's second FD.

    python experiments/digits_benchmark/feature_spaces.py --second outputs/classifier_seed1     # ~10 CPU minutes

The benchmark's FD lives in the shipped classifier's penultimate features, which compress small gaps near the
teacher (a few class-separating directions carry most of their variance). Each candidate scores the teacher's
default (DPM-Solver++(2M), 35 NFE) and cheaper settings of the same sampler and of DDIM on the same seeds;
resolving power is how many standard deviations apart a cheaper setting lands from the default: unpaired
(pooled seed-to-seed std) and paired (per-seed differences, common random numbers). Candidates:

- `penultimate`: the shipped classifier's 64 penultimate features (the benchmark's FD);
- `conv3_pooled`: the shipped classifier's third convolution, mean- and max-pooled (128);
- `second_penultimate` / `second_conv3_pooled`: the same of a separately trained classifier (`--second`,
  trained by `python recipes/train_classifier.py seed=1 output_dir=...`), independent weights.

Writes `eval/results/digits_feature_spaces.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stepdistill.classifier import DigitsClassifier
from stepdistill.data.digits import load_digits_tensors
from stepdistill.digits_benchmark import DigitsBenchmark, FeatureSpace, teacher_sample_fn
from stepdistill.io import atomic_write_text
from stepdistill.roles import make_real_score
from stepdistill.teachers import load_teacher
from stepdistill.samplers import steps_for_nfe

RESULTS = Path(__file__).resolve().parents[2] / "eval" / "results"
DEFAULT = ("dpmpp_2m", 35)
SETTINGS = [DEFAULT, ("dpmpp_2m", 16), ("dpmpp_2m", 8), ("ddim", 16), ("ddim", 8)]


def separation(few: list[float], default: list[float]) -> dict:
    few_, default_ = np.array(few), np.array(default)
    pooled = float(np.sqrt((few_.var(ddof=1) + default_.var(ddof=1)) / 2))
    diffs = few_ - default_
    return dict(ratio=float(few_.mean() / default_.mean()), pooled_std=pooled,
                separation_in_pooled_std=float(diffs.mean() / pooled),
                paired_separation=float(diffs.mean() / diffs.std(ddof=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--second", type=Path, required=True, help="a separately trained classifier's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "digits_feature_spaces.json")
    args = parser.parse_args()

    bench = DigitsBenchmark()
    second = DigitsClassifier.from_pretrained(args.second)
    ref_x, ref_y = load_digits_tensors(bench.resolution, "reference")
    extractors = {"penultimate": bench.classifier.features, "conv3_pooled": bench.classifier.pooled_features,
                  "second_penultimate": second.features, "second_conv3_pooled": second.pooled_features}
    spaces = {name: FeatureSpace(fn, ref_x, ref_y) for name, fn in extractors.items()}
    held_x, _ = load_digits_tensors(bench.resolution, "heldout")

    teacher = load_teacher("digits")
    denoiser = make_real_score(teacher)
    labels = bench.labels()
    fds = {name: {} for name in spaces}  # space -> "sampler@nfe" -> per-seed FD
    for sampler, nfe in SETTINGS:
        fn = teacher_sample_fn(denoiser, teacher.schedule, sampler=sampler, steps=steps_for_nfe(sampler, nfe))
        for seed in args.seeds:
            images = fn(labels, torch.Generator().manual_seed(seed))
            for name, space in spaces.items():
                fds[name].setdefault(f"{sampler}@{nfe}", []).append(round(space.fd(space.features(images)), 5))
        print(sampler, nfe, {name: np.mean(v[f"{sampler}@{nfe}"]).round(4) for name, v in fds.items()}, flush=True)

    key = f"{DEFAULT[0]}@{DEFAULT[1]}"
    result = dict(benchmark="digits", command="python " + " ".join(sys.argv), teacher="digits",
                  n_samples=bench.n_samples, seeds=args.seeds, default=key, second_classifier=str(args.second),
                  date=datetime.date.today().isoformat(), spaces={})
    for name, space in spaces.items():
        result["spaces"][name] = dict(
            feature_dim=int(space.ref_features.shape[1]),
            floor_fd=space.fd(space.features(held_x)),
            fd_per_seed=fds[name],
            resolving_power={k: separation(v, fds[name][key]) for k, v in fds[name].items() if k != key})
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, r in result["spaces"].items():
        rp = r["resolving_power"]
        print(f"{name:22s} floor {r['floor_fd']:.3f}  " + "  ".join(
            f"{k}: {v['ratio']:.2f}x {v['separation_in_pooled_std']:.1f}sd/{v['paired_separation']:.1f}p"
            for k, v in rp.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
