# The README's two commands: `make demo` (main job) and `make test`.
# Both build the virtual environment in .venv first, so a fresh clone needs only python3 and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch. On a CUDA machine, install the torch build you want into .venv first
# (any version pyproject.toml admits); it is then left alone.
TORCH  ?= torch==2.13.0

DEMO_SHARDS := shards/demo-audio
DEMO_RUN    := runs/demo-audio

.PHONY: demo test install clean mutants

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev,parity]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python pipelines/build_shards.py --modality audio --input tests/data/audio \
		--output $(DEMO_SHARDS) --max-count 2 --workers 2
	$(BIN)/python recipes/audio_mae.py --shards $(DEMO_SHARDS) --output $(DEMO_RUN) \
		--model tiny --num-frames 512 --batch-size 4 --max-steps 60 --lr 1e-3 --warmup-steps 5 \
		--log-every 5 --save-every 30 --workers 2

test: install
	$(BIN)/python -m pytest

# Mutation testing of the numerical and data core ([tool.mutmut] in pyproject.toml): slow (hours
# for the whole core on 2 cores), so never part of `make test`. ONLY='modalmae.masking.*' runs the
# mutants of one module; JOBS sets the parallel test processes.
JOBS ?= 2
mutants: install
	$(BIN)/pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(JOBS) $(ONLY)
	$(BIN)/python tests/mutation/report.py

clean:
	rm -rf $(DEMO_SHARDS) $(DEMO_RUN) mutants
