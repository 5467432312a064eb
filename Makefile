# stepdistill: `make demo` runs the main job on the embedded digits benchmark; `make test` the tests.
# Both create the virtual environment on first use (torch and torchvision come from PyPI or a local
# wheel cache; torchvision is needed by clean-fid and open_clip).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test teacher classifier baseline clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# Teacher baseline on the shipped digits teacher: FD / accuracy / speed at 1, 8 and 35 NFE (~3 min).
demo: venv
	$(PY) eval/teacher_baseline.py --demo --seeds 0 1 --out outputs/demo/teacher_digits.json

test: venv
	$(PY) -m pytest -q

# Reproduce the shipped assets and the committed baseline (see assets/README.md).
teacher: venv
	$(PY) recipes/train_teacher.py
classifier: venv
	$(PY) recipes/train_classifier.py
baseline: venv
	$(PY) eval/teacher_baseline.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
