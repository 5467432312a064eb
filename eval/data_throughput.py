"""Does loading real images slow training down? DMD2 steps on the tiny SD pipeline, its GAN's real images read from a
captioned JPEG folder by DataLoader workers, against the same run with those images already decoded in memory.

    python eval/data_throughput.py      # -> eval/results/data_throughput.json (~6 min on 2 cores)
    python eval/data_throughput.py --threads 1 --workers 1 2 4 --out /tmp/throughput.json

`--threads`: torch's threads in the training process (0: the recipe's, every core; 1 leaves the other cores to the
loader, as a GPU run does); `--workers`: data.loader_workers (0 decodes in the step).

Both arms run the same recipe object: after warm-up, blocks of steps alternate between the folder stream and an
in-memory stream of the same decoded items, so drift (the machine, the allocator) falls on both. The figure is the
ratio of median step times (folder / memory); the goal is <= 1.05 with 2 workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "eval" / "results" / "data_throughput.json"


def captioned_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` smooth random photos-like JPEGs of `size` squared (quality 90) and their metadata.jsonl."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)
        rows.append(json.dumps({"file_name": f"{i:05d}.jpg", "text": f"a photo number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


class InMemory(torch.utils.data.Dataset):
    """A dataset's items decoded once (the arm without loading)."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def measure(workers: int, *, folder: Path, resolution: int, batch: int, steps: int, blocks: int, out: Path) -> dict:
    import dmd2
    import quick
    from accelerate.state import AcceleratorState, PartialState

    from stepdistill.data.stream import RealStream
    from stepdistill.training import Draw

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    cfg = quick.config("dmd2", "tiny-sd", out, f"data.images={folder}", f"data.resolution={resolution}",
                       f"train.batch_size={batch}", "optim.update_ratio=1", f"data.loader_workers={workers}",
                       "train.overwrite=true")
    run = dmd2.setup(cfg)
    s = run.setup
    streams = {"folder": s.real, "memory": RealStream(InMemory(s.dataset), workers=0)}
    times: dict[str, list[float]] = {"folder": [], "memory": []}
    # each arm its own run of consecutive steps (so the folder's workers keep loading ahead across its blocks)
    step = {"folder": 0, "memory": 1_000_000}

    def one(arm: str) -> float:
        s.real = streams[arm]
        start = time.perf_counter()
        dmd2.step(run, Draw(s.accelerator, batch, seed=0, step=step[arm]), step[arm])
        step[arm] += 1
        return time.perf_counter() - start

    for arm in ("folder", "memory"):  # warm-up: the first steps (workers starting, allocator) are not timed
        for _ in range(3):
            one(arm)
    for block in range(blocks):
        for arm in (("folder", "memory") if block % 2 == 0 else ("memory", "folder")):
            times[arm] += [one(arm) for _ in range(steps)]
    median = {arm: statistics.median(t) for arm, t in times.items()}
    return {"workers": streams["folder"].workers, "median_step_s": median,
            "ratio": median["folder"] / median["memory"], "restarts": streams["folder"].restarts,
            "steps_per_arm": len(times["folder"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=512, help="the JPEGs' side in pixels")
    parser.add_argument("--resolution", type=int, default=128, help="the training resolution (data.resolution)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per block and arm")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                        help="torch's intra-op threads in the training process (0: the recipe's, every core)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = captioned_jpegs(Path(tmp) / "images", args.images, args.source_size)
        for threads in args.threads:
            if threads:  # kept by the recipe's setup (which otherwise gives the process every core)
                os.environ["STEPDISTILL_KEEP_THREADS"] = "1"
                torch.set_num_threads(threads)
            else:
                os.environ.pop("STEPDISTILL_KEEP_THREADS", None)
            for w in args.workers:
                rows.append(measure(w, folder=folder, resolution=args.resolution, batch=args.batch, steps=args.steps,
                                    blocks=args.blocks, out=Path(tmp) / f"run{threads}_{w}"))
                rows[-1]["torch_threads"] = torch.get_num_threads()
    result = {
        "what": "DMD2 steps on the tiny SD pipeline (GAN on): median step time with the GAN's real images read from a "
                "captioned JPEG folder by DataLoader workers, over the same images decoded in memory",
        "command": " ".join(["python eval/data_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU",
        "images": args.images, "source_size": args.source_size, "resolution": args.resolution, "batch": args.batch,
        "goal": "ratio <= 1.05 with 2 workers",
        "reading": "on 2 cores, torch's two threads and the loader's workers share the same cores: with every core "
                   "computing the step, the workers' decoding (about 8 ms an image here) slows it; with a core left "
                   "to them (one torch thread, as a GPU run leaves its CPU cores) loading is hidden",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        median = row["median_step_s"]
        print(f"{row['torch_threads']} torch threads, {row['workers']} workers: "
              f"folder {median['folder'] * 1e3:.1f} ms, "
              f"memory {median['memory'] * 1e3:.1f} ms a step: x{row['ratio']:.3f}")


if __name__ == "__main__":
    main()
