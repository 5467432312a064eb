"""What real digits score on the benchmark: the bar a distilled student is measured against.

    python experiments/digits_benchmark/digits_data_fd.py   # ~1 CPU minute; writes eval/results/digits_data_fd.json

Scores class-balanced sets of 1,000 real images drawn from the splits (`DigitsBenchmark.resampled`),
20 draws each, next to the teacher's default row (`eval/results/teacher_digits.json`):
- `heldout`, the floor: the 1,000 images the reference never saw (one set, no draws);
- `all` with replacement: i.i.d. draws from the teacher's training set (which holds the reference
  split): what a perfect sampler of the teacher's training distribution scores;
- `all` without replacement: 1,000 distinct training images (no sampler draws independently like this).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stepdistill.digits_benchmark import DigitsBenchmark, default_row
from stepdistill.io import atomic_write_text

RESULTS = Path(__file__).resolve().parents[2] / "eval" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "digits_data_fd.json"))
    args = ap.parse_args()
    if args.draws < 2:
        raise SystemExit("--draws must be >= 2 (a standard deviation is reported)")
    bench = DigitsBenchmark()
    rows = [dict(source="heldout (floor)", draws=1, fd=bench.floor()["fd"], fd_std=0.0)]
    for replace in (True, False):
        fds = [bench.resampled("all", seed, replace=replace)["fd"] for seed in range(args.draws)]
        rows.append(dict(source=f"all, {'with' if replace else 'without'} replacement", draws=args.draws,
                         fd=float(np.mean(fds)), fd_std=float(np.std(fds, ddof=1)),
                         fd_range=[round(min(fds), 4), round(max(fds), 4)]))
    default = default_row(json.loads((RESULTS / "teacher_digits.json").read_text())["rows"])
    if default is None:
        raise SystemExit("eval/results/teacher_digits.json has no default row "
                         "(run experiments/digits_benchmark/teacher_baseline.py)")
    rows.append(dict(source=f"teacher {default['sampler']} {default['nfe']} NFE (teacher_digits.json)",
                     draws=len(default["fd_per_seed"]), fd=default["fd"], fd_std=default["fd_std"]))
    atomic_write_text(args.out, json.dumps(dict(benchmark="digits", n_samples=bench.n_samples, rows=rows),
                                           indent=2) + "\n")
    print("| source | draws | FD (mean ± std) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['draws']} | {r['fd']:.3f} ± {r['fd_std']:.3f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
