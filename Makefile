# One-command set-up: `make demo` generates a scene, `make test` runs the suite.
# Both create .venv (Python 3.11) on first use and re-install only when a requirements file changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
EXAMPLE ?= ../shared/examples/paved-plaza.json
OUTPUT_DIR ?= outputs
# The example asks for 24 views at 480×704 (4 M Gaussians per scene): about an hour on a 2-core CPU
# (28 minutes with --video_fps=1).
# The CPU demo overrides it to 12 views at 224×320 (the image, view 7 of 24, stays on its camera as
# view 3); `make demo DEMO_FLAGS=` runs it as written. A rerun replaces the demo's own folder.
DEMO_FLAGS ?= --num_views=12 --resolution=224,320 --video_fps=4

# The demo model's whole recipe (README "Results"): synthetic data, then each stage in turn; every
# step resumes where it stopped when run again, and a finished stage is skipped.
TRAIN := $(PY) -m flashworld_jax.train
DEMO_DATA := data/synthetic-train/dataset_info.json data/synthetic-validation/dataset_info.json

.PHONY: demo test test-all bench clean train-demo

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMPS)/runtime: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@mkdir -p $(STAMPS) && touch $@

# gsplat is installed without its dependencies so that pip never resolves a CUDA torch for it.
$(STAMPS)/test: requirements-test.txt $(STAMPS)/runtime
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps gsplat==1.5.3
	@mkdir -p $(STAMPS) && touch $@

demo: $(STAMPS)/runtime
	$(PY) -m flashworld_jax.generate --config=configs/flashworld.py:tiny \
	  --input=$(EXAMPLE) --output_dir=$(OUTPUT_DIR) --overwrite $(DEMO_FLAGS)

# Two processes: the training tests compile the largest programs and start in a fresh one.
test: $(STAMPS)/test
	$(PY) -m pytest --ignore=tests/train
	$(PY) -m pytest tests/train

test-all: $(STAMPS)/test
	$(PY) -m pytest -m "" --ignore=tests/train
	$(PY) -m pytest -m "" tests/train

bench: $(STAMPS)/test
	for b in rasterizer denoiser vae text_encoder data train; do $(PY) -m bench.$$b || exit 1; done

data/synthetic-train/dataset_info.json: | $(STAMPS)/runtime
	$(PY) -m flashworld_jax.data.build --dataset=synthetic --split=train --num_scenes=400 \
	  --num_frames=16 --resolution=64,96 --output_dir=data/synthetic-train

data/synthetic-validation/dataset_info.json: | $(STAMPS)/runtime
	$(PY) -m flashworld_jax.data.build --dataset=synthetic --split=validation --num_scenes=16 \
	  --num_frames=16 --resolution=64,96 --output_dir=data/synthetic-validation

train-demo: $(STAMPS)/runtime $(DEMO_DATA)
	$(TRAIN) --config=configs/train.py:vae_demo --workdir=runs/demo_vae
	$(TRAIN) --config=configs/train.py:pretrain_demo --workdir=runs/demo_pretrain
	$(TRAIN) --config=configs/train.py:distill_demo --workdir=runs/demo_distill
	$(PY) -m flashworld_jax.train.export --workdir=runs/demo_distill --output=checkpoints/demo

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache $(OUTPUT_DIR)
