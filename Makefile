# stepdistill: `make demo` runs the main job on the embedded digits benchmark; `make test` the quick tests,
# `make test-all` every test. All create the virtual environment on first use: torch and torchvision from
# TORCH_PINS (PyPI or a local wheel cache; torchvision is needed by clean-fid and open_clip), everything
# else at the versions of requirements/lock.txt, the set the suite last passed with.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
LOCK ?= requirements/lock.txt
# The torch stack comes from TORCH_PINS (a CPU, CUDA or ROCm build, by platform), never from the lock
UNLOCKED := ^(torch|torchvision|triton|nvidia-.*|cuda-.*|stepdistill)==
SCRATCH ?= $(or $(TMPDIR),/tmp)/stepdistill-latest

.PHONY: venv lock test-latest demo teacher-demo test test-all teacher teacher-heldout classifier baseline overhead \
	imperfect evaluate clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]" -c $(LOCK)
	touch $@

# Refresh the lock: the newest releases that pyproject.toml admits, installed into a throwaway venv and
# frozen. Run `make test-latest` first: a lock is only worth the suite that passed on it.
lock:
	rm -rf $(SCRATCH)
	$(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/python -m pip install --quiet $(TORCH_PINS)
	$(SCRATCH)/bin/python -m pip install --quiet -e ".[test]"
	mkdir -p $(dir $(LOCK))
	{ echo "# The tested dependency set (make lock; Python $$($(SCRATCH)/bin/python -c 'import platform; print(platform.python_version())')). torch and torchvision: TORCH_PINS in the Makefile."; \
	  $(SCRATCH)/bin/python -m pip freeze --exclude-editable | grep -Ev '$(UNLOCKED)' | LC_ALL=C sort -f; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(SCRATCH)

# Upstream drift, before users meet it: the quick tier in a throwaway venv of the newest releases.
test-latest:
	rm -rf $(SCRATCH)
	$(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/python -m pip install --quiet $(TORCH_PINS)
	$(SCRATCH)/bin/python -m pip install --quiet --upgrade -e ".[test]"
	$(SCRATCH)/bin/python -m pip list --format=freeze | grep -Ei '^(diffusers|transformers|accelerate|peft|huggingface.hub|kernels)=='
	$(SCRATCH)/bin/python -m pytest -q -m "not slow"
	rm -rf $(SCRATCH)

# The main job on the embedded default: DMD2 distils the shipped digits teacher into a one-step
# generator, then prints teacher-vs-student FD / accuracy / speed-up, writes sample grids under
# outputs/dmd2_digits/samples and the exported pipeline under outputs/dmd2_digits/pipeline (10 to 13 min:
# training fits its 11.5-minute limit on any machine). A second `make demo` starts that folder over.
demo: venv
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/dmd2.py train.overwrite=true

# The shipped teacher's sampler baseline: FD / accuracy / speed at 1, 8 and 35 NFE (~3 min).
teacher-demo: venv
	$(PY) experiments/digits_benchmark/teacher_baseline.py --demo --seeds 0 1 --out outputs/demo/teacher_digits.json

# The quick tier: every test not marked slow (7 min on 2 CPU cores); test-all: everything (29 min; CI runs it).
test: venv
	$(PY) -m pytest -q -m "not slow"
test-all: venv
	$(PY) -m pytest -q

# Reproduce the shipped assets and the committed baseline (see assets/README.md).
teacher: venv
	$(PY) recipes/train_teacher.py
teacher-heldout: venv
	$(PY) recipes/train_teacher.py split=heldout output_dir=assets/digits_teacher_heldout
classifier: venv
	$(PY) recipes/train_classifier.py
baseline: venv
	$(PY) experiments/digits_benchmark/teacher_baseline.py --seeds 0 1 2

# The evaluation harness on the digits protocol: the shipped teacher at 1, 8 and 35 NFE and the DMD2
# student exported by `make demo`, checked against the committed figures (~10 min on one thread).
EVAL_OUT ?= outputs/eval/digits
evaluate: venv
	$(PY) eval/evaluate.py gen --protocol digits --model digits --sampler dpmpp_2m --nfe 1 8 35 --outdir $(EVAL_OUT)
	$(PY) eval/evaluate.py gen --protocol digits --model digits --sampler ddim --nfe 1 --outdir $(EVAL_OUT)
	$(PY) eval/evaluate.py gen --protocol digits --model outputs/dmd2_digits/pipeline --outdir $(EVAL_OUT)
	$(PY) eval/evaluate.py calc --protocol digits --outdir $(EVAL_OUT) --results eval/results/evaluate_digits.json \
		--compare eval/results/teacher_digits.json eval/results/dmd2_digits.json
overhead: venv
	$(PY) experiments/dmd2_step_overhead/dmd2_step_overhead.py
# DMD2, SiD, SIM and SwiftBrush on the control teacher, beside the shipped teacher's committed runs (~60 min)
imperfect: venv
	$(PY) experiments/digits_benchmark/imperfect_teacher.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
