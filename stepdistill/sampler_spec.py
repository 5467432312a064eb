"""How a student samples, defined once: `SamplerSpec`, stored with every student as `student.json`.

A distilled student is a network plus the few times it was trained at and the rule that links them. Everything
that samples a student derives from this one record: `Student.sample`, the exported scheduler and the model
card's call (`stepdistill.export`), the pipelines that travel with an export, and `eval/evaluate.py`, which
rebuilds the sampling of any export or checkpoint from `student.json` without reading a recipe's config.

    spec.times(steps)        the times `steps` of them runs (an evenly strided subset of the student's own)
    spec.sample(den, ...)    the student's sampler on noise z: x = input_scale z, then one or more steps
    spec.exported_times()    the scheduler's times (integer indices, or flow sigmas in (0, 1])
    spec.scheduler_options() what a stock LCMScheduler / TCDScheduler needs beyond the teacher's schedule

The sampler between steps (`kind`):
- "multistep": x0 = D(x_t, t_i), re-noised to t_{i+1} with fresh noise (DMD2, consistency models; LCMScheduler);
- "tcd": TCD's step with `gamma` (TCDScheduler's eta); gamma = 0 is a deterministic DDIM jump on the x0
  (multistep-consistency segment students).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch

__all__ = ["SamplerSpec", "STUDENT_JSON", "read_student_json", "student_record", "strided"]

STUDENT_JSON = "student.json"
FORMAT = 1
BOUNDARIES = (None, "lcm", "cm")


def strided(timesteps: torch.Tensor, steps: int | None) -> torch.Tensor:
    """The student's own times, or `steps` of them evenly strided from the first (a 4-step DMD2 student sampled
    in 2 steps runs 999 and 499, as LCM subsets its grid): a student is only trained at its own times."""
    if steps is None or steps == len(timesteps):
        return timesteps
    if not 1 <= steps <= len(timesteps):
        raise ValueError(f"steps={steps}: this student samples in 1..{len(timesteps)} of its times "
                         f"{[float(t) for t in timesteps]}")
    return timesteps[(torch.arange(steps) * len(timesteps)) // steps]


@dataclass(frozen=True)
class SamplerSpec:
    timesteps: tuple[float, ...]  # the student's own times, descending (VP indices, or flow sigmas in (0, 1])
    steps: Optional[int] = None  # how many of them by default (None: all); a skip-grid student samples K of its grid
    gamma: Optional[float] = None  # None: re-noise x0 with fresh noise; a value: TCD's gamma
    boundary: Optional[str] = None  # the consistency boundary condition the network applies: "lcm", "cm" or none
    timestep_scaling: Optional[float] = None  # LCM's boundary scaling ("lcm" students)
    input_scale: float = 1.0  # the first network input is input_scale * z (sigma(t_0))
    flow: bool = False  # times are rectified-flow sigmas rather than VP-discrete indices
    num_train_timesteps: int = 1000
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        ts = tuple(float(t) for t in self.timesteps)
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "kind", "multistep" if self.gamma is None else "tcd")
        if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"a student's timesteps must be non-empty and strictly descending, got {list(ts)}")
        if self.gamma is not None and not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma={self.gamma} must lie in [0, 1] (or None: re-noise x0 between steps)")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary={self.boundary!r}: one of {BOUNDARIES}")
        if self.boundary == "lcm" and self.timestep_scaling is None:
            raise ValueError("an 'lcm' boundary needs its timestep_scaling")
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise ValueError(f"input_scale={self.input_scale} must be a positive number")
        strided(self.tensor(), self.steps)  # a default step count it cannot sample fails here

    # -- times --------------------------------------------------------------------------------------

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.timesteps, dtype=torch.float64)

    def times(self, steps: int | None = None) -> torch.Tensor:
        """The times `steps` network evaluations run (default: the spec's own step count)."""
        return strided(self.tensor(), self.steps if steps is None else steps)

    @property
    def nfe(self) -> int:
        return len(self.times())

    @property
    def max_steps(self) -> int:
        return len(self.timesteps)

    def exported_times(self, steps: int | None = None) -> list:
        """The exported scheduler's times: integer indices (VP-discrete), or sigmas rounded to 1e-6 (flow)."""
        if self.flow:
            return [round(float(t), 6) for t in self.times(steps)]
        return [int(round(float(t))) for t in self.times(steps)]

    # -- sampling -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, denoise, schedule, z: torch.Tensor, generator: torch.Generator | None,
               steps: int | None = None) -> torch.Tensor:
        """The student's samples from noise z ~ N(0, I): `denoise(x, t)` is its network with the condition bound."""
        from .samplers import multistep, tcd

        x = z * self.input_scale
        ts = self.times(steps)
        if self.gamma is not None:
            return tcd(denoise, schedule, x, ts, gamma=self.gamma, generator=generator)
        return multistep(denoise, schedule, x, ts, generator=generator)

    # -- the stock scheduler ------------------------------------------------------------------------

    def skip_grid(self) -> bool:
        """The student holds a skip grid {k-1, 2k-1, ..., N-1} and samples K of it (LCM's `original_inference_steps`
        = its length, so that `num_inference_steps=K` picks the K times `times(K)` does)."""
        ts = [int(round(t)) for t in self.timesteps]
        n = len(ts)
        k = self.num_train_timesteps // n
        return self.steps is not None and not self.flow and ts == [(i + 1) * k - 1 for i in reversed(range(n))]

    def scheduler_options(self) -> dict:
        """What the exported LCMScheduler (TCDScheduler with gamma) needs beyond the teacher's schedule to sample
        as `sample` does: LCM's boundary scaling, the skip grid's length, TCD's gamma."""
        if self.boundary == "cm":
            raise ValueError("the export's LCMScheduler applies LCM's boundary condition; a 'cm' consistency "
                             "student has no stock-scheduler equivalent (train it with model.boundary=lcm)")
        options = {}
        if self.boundary == "lcm":
            options["timestep_scaling"] = self.timestep_scaling
        if self.skip_grid():
            options["original_inference_steps"] = len(self.timesteps)
        if self.gamma is not None:
            options["gamma"] = self.gamma
        return options

    # -- student.json -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {**asdict(self), "timesteps": list(self.timesteps)}

    @classmethod
    def from_dict(cls, data: dict) -> "SamplerSpec":
        names = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - names - {"kind"})
        if unknown:
            raise ValueError(f"unknown sampler keys {unknown}; valid: {sorted(names)}")
        spec = cls(**{k: v for k, v in data.items() if k in names})
        if "kind" in data and data["kind"] != spec.kind:
            raise ValueError(f"sampler kind {data['kind']!r} disagrees with gamma={spec.gamma}")
        return spec


def student_record(spec: SamplerSpec, *, recipe: str, condition: str, shape: tuple[int, ...],
                   call: dict | None = None, students: int = 1) -> str:
    """The text of `student.json`: how to sample (`sampler`), what conditions it (`class`, `text`, `lr`), the
    shape of one sample in the model's space (its noise z), the pipeline call's own arguments (Flux's embedded
    guidance, the prompt length, the image size) and the recipe."""
    record = {"format": FORMAT, "recipe": recipe, "condition": condition, "students": int(students),
              "shape": [int(d) for d in shape], "sampler": spec.to_dict(), "call": dict(call or {})}
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def read_student_json(folder: str | Path) -> tuple[SamplerSpec, dict]:
    """(the spec, the whole record) of a checkpoint's or an export's `student.json`; one line naming the file when
    it is missing or unreadable."""
    path = Path(folder) / STUDENT_JSON
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {FORMAT}")
        return SamplerSpec.from_dict(record["sampler"]), record
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (every checkpoint and export records how its student samples)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: not a student record ({type(e).__name__}: {e})") from None
