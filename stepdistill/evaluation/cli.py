"""Measure any model the way the papers do: `ref` caches reference statistics, `gen` generates images at a
grid of NFEs, `calc` computes the metrics and writes the report, `all` does the three in one go.

    python eval/evaluate.py all --protocol digits --model digits --nfe 1 8 35 --sampler dpmpp_2m
    python eval/evaluate.py gen --protocol digits --model outputs/dmd2_digits/pipeline --outdir outputs/eval/digits
    accelerate launch --num_processes 2 eval/evaluate.py gen ...          # images split across processes
    python eval/evaluate.py calc --protocol digits --outdir outputs/eval/digits \\
        --results eval/results/evaluate_digits.json --compare eval/results/dmd2_digits.json
    python eval/evaluate.py all --protocol coco2017_5k --model PIPELINE --nfe 1 4 --captions captions.txt \\
        --ref val2017/ --inception-weights inception-2015-12-05.pt --clip-pretrained open_clip_model.safetensors

`--model`: `digits` or a teacher folder (sampled with `--sampler`), an exported pipeline folder, or a
training checkpoint folder of any recipe (`OUTPUT/checkpoints/step_XXXXXXXX`: the student its recipe builds, with
the checkpoint's weights); anything else (a LoRA export, a run's folder, a truncated file) is refused with one
line saying what it is (`stepdistill.evaluation.inputs`). Every output path and every --model is checked before
any work. Protocols: `stepdistill.evaluation.protocols`. Generated sets live in
`<outdir>/<model>-<sampler>/nfe<K>/set<s>/` with a meta.json; `calc` scores every set it finds there.

Super-resolution, `sr`: bicubic and each model on the same inputs, one JSON row each (+ CSV and a crop grid beside it)

    python eval/evaluate.py sr --model sr outputs/tadsr/pipeline --nfe 15 --results eval/results/evaluate_sr.json
    python eval/evaluate.py sr --model outputs/tadsr/pipeline --lr-dir my_lr/ --hr-dir my_hr/ --results out.json
    python eval/evaluate.py sr --model outputs/tadsr/pipeline --lr-dir my_lr/ --save-images outputs/sr_images

Inputs: the embedded held-out patches (`stepdistill.data.patches`, degraded as the model's training data: bicubic
x`sr_scale`), or `--lr-dir` (and `--hr-dir`, same file names, for the metrics; without it only images and times).
Models: an SR teacher (`sr`, `sr-x2` or a folder; through `--sampler` at each `--nfe`, default 15) or an exported SR
pipeline (run as a user runs it, at its own steps). Metrics (`stepdistill.sr_benchmark`): PSNR and SSIM on the Y
channel with `sr_scale` pixels cropped from every border (BasicSR / pyiqa `test_y_channel=True`), and the offline
perceptual pair, the high-frequency spectrum error and energy ratio above the LR Nyquist frequency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from stepdistill.evaluation.clip_score import ClipScoreConfig
from stepdistill.evaluation.fid import FeatureStats, FidConfig
from stepdistill.evaluation.protocols import PROTOCOLS, Protocol, conditions, get_protocol, image_seeds, read_captions

ROOT = Path(__file__).resolve().parents[2]  # the checkout: outputs/ beside recipes/ and eval/


@dataclass
class Options:
    protocol: str = "digits"
    outdir: Path = ROOT / "outputs" / "eval"
    models: list[str] = field(default_factory=list)
    sampler: str = "dpmpp_2m"
    nfe: list[int] = field(default_factory=list)  # teachers: required; students: default = their own
    student_nfe: list[int] = field(default_factory=list)
    sets: Optional[list[int]] = None  # set seeds; default: the protocol's
    num_images: Optional[int] = None  # override the protocol's count (smoke runs)
    batch_size: int = 250
    image_format: Optional[str] = None
    captions: Optional[str] = None
    ref: Optional[str] = None
    ref_stats: Optional[Path] = None
    results: Optional[Path] = None
    compare: list[Path] = field(default_factory=list)
    fid: FidConfig = FidConfig()
    clip: ClipScoreConfig = ClipScoreConfig()
    device: str = "cpu"

    @property
    def proto(self) -> Protocol:
        return get_protocol(self.protocol).with_overrides(
            num_images=self.num_images, image_format=self.image_format,
            set_seeds=tuple(self.sets) if self.sets else None)

    def stats_path(self) -> Path:
        return self.ref_stats or self.outdir / "ref" / f"{self.protocol}_{self.fid.mode}.npz"


def parse(argv: list[str] | None = None) -> tuple[str, Options]:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--protocol", default="digits", choices=sorted(PROTOCOLS))
    common.add_argument("--outdir", type=Path, default=Options.outdir, help="where generated sets and reference stats go")
    common.add_argument("--num-images", type=int, help="override the protocol's images per set")
    common.add_argument("--sets", type=int, nargs="+", help="set seeds (default: the protocol's)")
    common.add_argument("--captions", help="captions file (one per line, or COCO captions_*.json)")
    common.add_argument("--ref", help="reference images: folder, .zip, npz batch, or clean-fid name/res/split")
    common.add_argument("--ref-stats", type=Path, help="cached reference statistics (.npz)")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--fid-mode", default=None, choices=["clean", "legacy_tensorflow", "legacy_pytorch"])
    common.add_argument("--inception-weights", help="local Inception weights file (else clean-fid downloads it)")
    common.add_argument("--clip-model", default=ClipScoreConfig.model)
    common.add_argument("--clip-pretrained", default=ClipScoreConfig.pretrained, help="open_clip tag or weights file")
    common.add_argument("--clip-cache-dir")
    common.add_argument("--clip-prefix", default=ClipScoreConfig.prefix)
    common.add_argument("--clip-times-100", action="store_true", help="report 100 x cosine (torchmetrics)")
    gen = argparse.ArgumentParser(add_help=False)
    gen.add_argument("--model", dest="models", nargs="+", required=True)
    gen.add_argument("--sampler", default="dpmpp_2m", help="teacher ODE sampler (ddim, euler, heun, dpmpp_2m)")
    gen.add_argument("--nfe", type=int, nargs="+", default=[], help="NFE grid (teachers; students too if given)")
    gen.add_argument("--student-nfe", type=int, nargs="+", default=[], help="NFE grid for students only")
    gen.add_argument("--batch-size", type=int, default=250)
    gen.add_argument("--format", dest="image_format", choices=["png", "npz"])
    calc = argparse.ArgumentParser(add_help=False)
    calc.add_argument("--results", type=Path, help="results JSON (CSV, plots, report beside it)")
    calc.add_argument("--compare", type=Path, nargs="*", default=[], help="results JSONs whose rows to check against")

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ref", parents=[common], help="build and cache reference statistics")
    sub.add_parser("gen", parents=[common, gen], help="generate image sets")
    sub.add_parser("calc", parents=[common, calc], help="compute metrics of generated sets, write the report")
    sub.add_parser("all", parents=[common, gen, calc], help="ref, gen and calc")
    sr = sub.add_parser("sr", help="super-resolution: bicubic and each model on LR inputs (module docstring)")
    sr.add_argument("--model", dest="models", nargs="+", required=True)
    sr.add_argument("--sampler", default="dpmpp_2m", help="teacher ODE sampler (ddim, euler, heun, dpmpp_2m)")
    sr.add_argument("--nfe", type=int, nargs="+", default=[15], help="NFE grid for teachers")
    sr.add_argument("--lr-dir", type=Path, help="low-resolution inputs (default: the embedded test patches)")
    sr.add_argument("--hr-dir", type=Path, help="ground truth for --lr-dir, same file names")
    sr.add_argument("--num-images", type=int, default=256, help="embedded test patches to use")
    sr.add_argument("--batch-size", type=int, default=64)
    sr.add_argument("--seed", type=int, default=0, help="the samplers' noise")
    sr.add_argument("--outdir", type=Path, default=Options.outdir, help="where --results goes by default")
    sr.add_argument("--results", type=Path, help="results JSON (CSV and crop grid beside it); default "
                                                 "<outdir>/evaluate_sr.json")
    sr.add_argument("--save-images", type=Path, help="also write every model's outputs as PNG files here")
    a = parser.parse_args(argv)
    if a.command == "sr":
        if min(a.nfe) < 1:
            parser.error(f"--nfe must be >= 1 network evaluations; got {a.nfe}")
        if a.hr_dir is not None and a.lr_dir is None:
            parser.error("--hr-dir scores --lr-dir's outputs; give --lr-dir too")
        return a.command, a
    bad = [n for n in [*getattr(a, "nfe", []), *getattr(a, "student_nfe", [])] if n < 1]
    if bad:
        parser.error(f"--nfe / --student-nfe must be >= 1 network evaluations; got {bad}")
    mode = a.fid_mode or get_protocol(a.protocol).fid_mode
    opts = Options(
        protocol=a.protocol, outdir=a.outdir, models=getattr(a, "models", []), sampler=getattr(a, "sampler", "dpmpp_2m"),
        nfe=getattr(a, "nfe", []), student_nfe=getattr(a, "student_nfe", []), sets=a.sets, num_images=a.num_images,
        batch_size=getattr(a, "batch_size", 250), image_format=getattr(a, "image_format", None), captions=a.captions,
        ref=a.ref, ref_stats=a.ref_stats, results=getattr(a, "results", None), compare=getattr(a, "compare", []),
        fid=FidConfig(mode=mode, inception_weights=a.inception_weights),
        clip=ClipScoreConfig(model=a.clip_model, pretrained=a.clip_pretrained, prefix=a.clip_prefix,
                             times_100=a.clip_times_100, cache_dir=a.clip_cache_dir),
        device=a.device)
    return a.command, opts


# ----------------------------------------------------------------------------
# ref

def cmd_ref(opts: Options) -> Optional[FeatureStats]:
    proto = opts.proto
    if proto.kind == "digits":
        print("digits: the reference is the shipped 797-image split, built by DigitsBenchmark; nothing to cache")
        return None
    from stepdistill.evaluation.reference import build_reference

    path = opts.stats_path()
    if path.is_file():
        print(f"reference statistics: {path} (cached)")
        return FeatureStats.load(path)
    stats = build_reference(proto, opts.ref, opts.fid, device=opts.device)
    stats.save(path)
    print(f"reference statistics: {path}")
    return stats


# ----------------------------------------------------------------------------
# gen

def cmd_gen(opts: Options) -> None:
    from accelerate import PartialState

    from stepdistill.evaluation.generate import describe, generate_images, load_model

    proto = opts.proto
    caps = read_captions(opts.captions) if proto.conditioning == "caption" else None
    conds = conditions(proto, caps)
    fmt = proto.image_format
    for spec in opts.models:
        model = load_model(spec, sampler=opts.sampler, device=opts.device)
        grid = opts.nfe if model.native_nfe is None else (opts.student_nfe or opts.nfe or [model.native_nfe])
        if not grid:
            raise ValueError(f"--nfe is required for {spec} (a teacher sampled with {opts.sampler})")
        for nfe in grid:  # a step count the model cannot sample is refused before its first image
            getattr(model, "timesteps_for", lambda n: None)(nfe)
        for nfe in grid:
            for s in proto.set_seeds:
                folder = opts.outdir / f"{model.name}-{model.sampler}" / f"nfe{nfe:03d}" / f"set{s}"
                _check_owner(folder, describe(model))
                timing = generate_images(model, conds, image_seeds(proto, s), nfe, folder,
                                         batch_size=opts.batch_size, image_format=fmt)
                if PartialState().is_main_process:
                    meta = dict(describe(model), nfe=model.nfe_of(nfe), requested_nfe=nfe, set_seed=s,
                                image_seeds=[image_seeds(proto, s)[0], image_seeds(proto, s)[-1]],
                                protocol=proto.name, num_images=proto.num_images, conditioning=proto.conditioning,
                                captions=opts.captions, batch_size=opts.batch_size, image_format=fmt,
                                device=opts.device, threads=torch.get_num_threads(), **timing)
                    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
                    print(f"{model.name} {model.sampler} NFE {nfe} set {s}: {timing['images']} images, "
                          f"{1e3 * timing['seconds_per_image']:.2f} ms/image", flush=True)


def _read_set(folder: Path, meta: dict):
    """A set's images, exactly those its manifest (meta.json) lists: any other count is refused."""
    from stepdistill.evaluation.generate import read_images

    images, seeds = read_images(folder)
    first, last = meta["image_seeds"]
    if len(seeds) != meta["num_images"] or int(seeds[0]) != first or int(seeds[-1]) != last:
        raise ValueError(f"{folder} holds {len(seeds)} images (seeds {int(seeds[0])}..{int(seeds[-1])}), its "
                         f"meta.json lists {meta['num_images']} ({first}..{last}): regenerate it with `gen`")
    return images, seeds


def _check_owner(folder: Path, described: dict) -> None:
    """A set folder belongs to one model (its meta.json is the set's manifest): another model of the same
    name (two students of one recipe, say) would overwrite it, so it is refused."""
    from stepdistill.evaluation.inputs import read_json

    meta_path = folder / "meta.json"
    if meta_path.is_file():
        source = read_json(meta_path).get("source")
        if source is not None and source != described.get("source"):
            raise ValueError(f"{folder} holds sets of {source}, another model named {described['model']!r}: "
                             "write this one to another --outdir")


# ----------------------------------------------------------------------------
# calc

def _sets(opts: Options) -> dict[tuple, list[tuple[Path, dict]]]:
    from stepdistill.evaluation.inputs import read_json

    groups: dict[tuple, list] = {}
    for meta_path in sorted(opts.outdir.glob("*/nfe*/set*/meta.json")):
        meta = read_json(meta_path)
        if meta["protocol"] != opts.protocol or meta["num_images"] != opts.proto.num_images:
            continue
        groups.setdefault((meta["model"], meta["sampler"], meta["nfe"]), []).append((meta_path.parent, meta))
    if not groups:
        raise ValueError(f"no generated {opts.protocol} sets under {opts.outdir}; run `gen` first")
    return groups


def _row(key, sets, per_set, seconds, aggregate) -> dict:
    model, sampler, nfe = key
    meta = sets[0][1]
    row = dict(model=model, sampler=sampler, nfe=nfe, **aggregate(per_set, seconds),
               set_seeds=[m["set_seed"] for _, m in sets], images=meta["num_images"], processes=meta["processes"],
               batch_size=meta["batch_size"], source=meta["source"])
    if meta["kind"] == "teacher":
        from stepdistill.samplers import steps_for_nfe

        row.update(steps=steps_for_nfe(sampler, meta["requested_nfe"]), spacing=meta["spacing"], guidance=1.0)
    return row


def calc_digits(opts: Options) -> tuple[list[dict], dict, dict, tuple]:
    from stepdistill.digits_benchmark import DigitsBenchmark
    from stepdistill.evaluation.digits import aggregate_sets, score_digits_set

    bench = DigitsBenchmark()
    floor = bench.floor()
    rows, grid_images, grid_labels = [], [], []
    for key, sets in _sets(opts).items():
        per_set, seconds = [], []
        for folder, meta in sets:
            images, seeds = _read_set(folder, meta)
            labels = [int(s) % 10 for s in seeds]  # image i of a set has label i % 10 and seed set * N + i
            per_set.append(score_digits_set(bench, images, labels))
            seconds.append(meta["seconds_per_image"])
            if meta["set_seed"] == sets[0][1]["set_seed"]:
                grid_images.append(images[:20])
                grid_labels.append(f"{key[0]} {key[1]} {key[2]}")
        rows.append(_row(key, sets, per_set, seconds, aggregate_sets))
        r = rows[-1]
        print(f"{r['model']:8s} {r['sampler']:9s} NFE {r['nfe']:3d}: FD {r['fd']:.3f} ± {r['fd_std']:.3f}  "
              f"FD2 {r['fd2']:.3f} ± {r['fd2_std']:.3f}  KID {r['kid']:.4f}  P {r['precision']:.3f}  R {r['recall']:.3f}  acc {r['accuracy']:.3f}  "
              f"{1e3 * r['seconds_per_image']:.2f} ms/img", flush=True)
    settings = dict(features="DigitsClassifier penultimate features / reference RMS std (stepdistill.digits_benchmark)",
                    features_fd2=DigitsBenchmark.SECOND_FEATURES,
                    reference="digits reference split, 797 images, classes weighted equally",
                    kid_subsets=50, n_per_class=bench.n_per_class, images_stored_as="uint8")
    floor = dict(fd=floor["fd"], fd2=floor["fd2"], kid=floor["kid"], precision=floor["precision"], recall=floor["recall"],
                 accuracy=floor["accuracy"],
                 effective_dimension=floor["effective_dimension"], feature_dim=floor["feature_dim"])
    return rows, settings, floor, (grid_images, grid_labels)


def calc_fid(opts: Options) -> tuple[list[dict], dict, dict, tuple]:
    from stepdistill.evaluation.clip_score import ClipScorer
    from stepdistill.evaluation.fid import feature_model, features_to_stats, fid_kid, settings
    from stepdistill.evaluation.reference import images_features

    proto = opts.proto
    ref = cmd_ref(opts)
    model = feature_model(opts.fid, opts.device)
    clip = ClipScorer(opts.clip, opts.device) if proto.clip_score else None
    rows, grid_images, grid_labels = [], [], []
    for key, sets in _sets(opts).items():
        per_set, seconds = [], []
        for folder, meta in sets:
            images, seeds = _read_set(folder, meta)
            stats = features_to_stats(images_features(images, proto, opts.fid, model, opts.device), {})
            scores = fid_kid(stats, ref, opts.fid)
            if clip is not None:
                caps = conditions(proto, read_captions(meta["captions"]))
                scores["clip_score"] = clip.score(images, [caps[int(s) % proto.num_images] for s in seeds])
            per_set.append(scores)
            seconds.append(meta["seconds_per_image"])
            if meta["set_seed"] == sets[0][1]["set_seed"]:
                grid_images.append(images[:8])
                grid_labels.append(f"{key[0]} {key[1]} {key[2]}")

        def aggregate(per_set, seconds):
            out = {}
            for k in per_set[0]:
                v = np.array([r[k] for r in per_set])
                out[k], out[f"{k}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
            out["fid_per_seed"] = [round(r["fid"], 4) for r in per_set]
            out["seconds_per_image"] = float(np.median(seconds))
            return out

        rows.append(_row(key, sets, per_set, seconds, aggregate))
        print(f"{key}: FID {rows[-1]['fid']:.3f}", flush=True)
    msettings = dict(fid=settings(opts.fid, None), reference=ref.settings,
                     clip=clip.settings() if clip else None)
    return rows, msettings, {}, (grid_images, grid_labels)


def _results_rows(path: Path) -> list[dict]:
    from stepdistill.evaluation.inputs import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"--compare {path}: not a results file of evaluate.py (no rows)")
    return data["rows"]


def compare(rows: list[dict], paths: list[Path]) -> dict:
    """Each of our rows against the same (model, sampler, NFE) row of another results file: the difference in
    units of the combined seed spread sqrt(std_a^2 + std_b^2)."""
    out = {}
    for path in paths:
        theirs = _results_rows(path)
        for r in rows:
            t = next((t for t in theirs if (t["model"], t["sampler"], t["nfe"]) == (r["model"], r["sampler"], r["nfe"])),
                     None)
            if t is None or "fd" not in t:
                continue
            spread = float(np.hypot(r["fd_std"], t["fd_std"]))
            z = (r["fd"] - t["fd"]) / spread if spread else float("inf")
            name = f"{r['model']} {r['sampler']} NFE {r['nfe']} vs {path.name}"
            out[name] = dict(ours=r["fd"], ours_std=r["fd_std"], theirs=t["fd"], theirs_std=t["fd_std"],
                             difference_in_combined_std=z, within_spread=abs(z) <= 2.0,
                             text=f"FD {r['fd']:.3f} ± {r['fd_std']:.3f} here vs {t['fd']:.3f} ± {t['fd_std']:.3f} "
                                  f"there: {z:+.2f} combined std ({'agrees' if abs(z) <= 2 else 'DISAGREES'})")
            print(name + ": " + out[name]["text"])
    return out


def cmd_calc(opts: Options, argv: list[str]) -> dict:
    from stepdistill.evaluation.report import write_report

    proto = opts.proto
    rows, msettings, floor, grid = calc_digits(opts) if proto.kind == "digits" else calc_fid(opts)
    result = dict(
        benchmark=proto.name, protocol=asdict(proto), command="python eval/evaluate.py " + " ".join(argv),
        n_samples=proto.num_images, set_seeds=list(proto.set_seeds), seeds=list(proto.set_seeds),
        image_seeds="set_seed * n_samples + i, one torch.Generator per image",
        metric_settings=msettings, floor=floor, **{f"floor_{k}": v for k, v in floor.items() if k in ("fd", "kid", "accuracy")},
        machine=dict(platform=platform.platform(), torch=torch.__version__, threads=torch.get_num_threads(),
                     device=opts.device),
        date=datetime.date.today().isoformat(), rows=rows)
    if opts.compare:
        result["comparisons"] = compare(rows, opts.compare)
    out = opts.results or opts.outdir / f"evaluate_{proto.name}.json"
    paths = write_report(result, out, grid if grid[0] else None)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return result


def main(argv: list[str] | None = None) -> None:
    """Bad input (a model that cannot be loaded, an incomplete checkpoint) prints one line, `error: ...`, and
    exits with status 2; `--debug` keeps the traceback."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        run(argv)
    except (ValueError, OSError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------
# Checks before any work: every output path, every --model

def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(path: Path, option: str, given: Optional[Path] = None) -> None:
    """`path` is a folder that exists or can be created, and a file can be written in it (probed: a temporary
    file in it or, where it does not exist yet, in its nearest existing parent folder). `given`: the path as
    the option named it (a file in `path`)."""
    given = given or path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {given}: {path} is a file, not a folder")
    where = _first_existing(path)
    if not where.is_dir():
        raise ValueError(f"{option} {given}: cannot create {path}, {where} is a file")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise ValueError(f"{option} {given}: cannot write in {where} ({e.strerror or e})") from None


def _writable_file(path: Path, option: str) -> None:
    """`path` can be written as a file (with the files written beside it): not a folder, its folder writable."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the file to write, e.g. {path / 'results.json'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{option} {path} is not a regular file")
    _writable_dir(path.parent, option, path)


def check_outputs(command: str, opts) -> None:
    """Every path this command writes, checked before any model loads or any image is generated or scored."""
    if command == "sr":
        _writable_file(opts.results or opts.outdir / "evaluate_sr.json", "--results")
        if opts.save_images is not None:
            _writable_dir(opts.save_images, "--save-images")
        return
    if command in ("gen", "all"):
        _writable_dir(opts.outdir, "--outdir")
    if command in ("ref", "all") and opts.proto.kind != "digits" and not opts.stats_path().is_file():
        _writable_file(opts.stats_path(), "--ref-stats" if opts.ref_stats else "--outdir")
    if command in ("calc", "all"):
        _writable_file(opts.results or opts.outdir / f"evaluate_{opts.proto.name}.json", "--results")


def check_inputs(command: str, opts) -> None:
    """Every --model recognised (or refused with what it is) and the files it would read complete, and every
    --compare a results file, before any work."""
    from stepdistill.evaluation.checkpoint import read_checkpoint
    from stepdistill.evaluation.generate import check_model
    from stepdistill.evaluation.inputs import check_folder_files, identify

    for spec in getattr(opts, "models", None) or []:
        if command != "sr":
            check_model(spec)
            continue
        found = identify(spec)  # sr: exported SR pipelines and SR teachers (`sr_benchmark` checks the scale)
        if found.kind == "checkpoint":
            run = read_checkpoint(found.path)
            if not run.super_resolution:
                raise ValueError(f"{found.path} is not a super-resolution model (a {run.recipe} training checkpoint): "
                                 f"measure it with `python eval/evaluate.py gen --model {found.path}`")
            export = run.export if run.export.is_dir() else f"{run.run_dir}/pipeline"
            raise ValueError(f"{found.path} is a training checkpoint of a {run.recipe} run; `sr` measures exported "
                             f"super-resolution pipelines and SR teachers: pass its export ({export})")
        if found.kind == "pipeline":
            raise ValueError(f"{found.path} is not a super-resolution model (an exported image-generation pipeline): "
                             f"measure it with `python eval/evaluate.py gen --model {found.path}`")
        if found.path is not None:
            check_folder_files(found.path)
    if command in ("calc", "all"):
        for path in opts.compare:
            _results_rows(path)


def cmd_sr(a: argparse.Namespace, argv: list[str]) -> dict:
    from stepdistill.sr_benchmark import evaluate_sr_models, format_row, write_sr_results

    result, images, conditioner = evaluate_sr_models(
        a.models, sampler=a.sampler, nfe=a.nfe, lr_dir=a.lr_dir, hr_dir=a.hr_dir, num_images=a.num_images,
        batch_size=a.batch_size, seed=a.seed, save_images=a.save_images)
    result = {"command": "python eval/evaluate.py " + " ".join(argv), **result}
    paths = write_sr_results(result, a.results or a.outdir / "evaluate_sr.json", images, conditioner=conditioner)
    for r in result["rows"]:
        print(format_row(r))
    print("wrote " + ", ".join(str(p) for p in paths))
    return result


def run(argv: list[str]) -> None:
    command, opts = parse(argv)
    check_outputs(command, opts)
    check_inputs(command, opts)
    if command == "sr":
        cmd_sr(opts, argv)
        return
    if command in ("ref", "all"):
        cmd_ref(opts)
    if command in ("gen", "all"):
        cmd_gen(opts)
    if command in ("calc", "all"):
        from accelerate import PartialState

        if PartialState().is_main_process:
            cmd_calc(opts, argv)


if __name__ == "__main__":
    main()
