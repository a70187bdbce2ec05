# One-command set-up: `make demo` generates a scene, `make test` runs the suite.
# Both create .venv (Python 3.11) on first use and re-install only when a requirements file changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
OUTPUT_DIR ?= outputs
# The demo: the trained `demo` model (checkpoints/demo, `make train-demo`) on a held-out synthetic
# scene shipped with the repository, scored against its true views. Another request runs with e.g.
# `make demo EXAMPLE=../shared/examples/paved-plaza.json DEMO_FLAGS="--num_views=8 --resolution=64,96"`.
EXAMPLE ?= examples/held-out-scene/held-out-scene.json
DEMO_FLAGS ?= --ground_truth=examples/held-out-scene/ground_truth --video_fps=8

# The demo model's whole recipe (README "Results"): synthetic data, then each stage in turn; every
# step resumes where it stopped when run again, and a finished stage is skipped.
TRAIN := $(PY) -m flashworld_jax.train
DEMO_DATA := data/synthetic-train/dataset_info.json data/synthetic-validation/dataset_info.json

.PHONY: demo test test-all bench clean train-demo distill-ablations results

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
	$(PY) -m flashworld_jax.generate --config=configs/flashworld.py:demo --checkpoint=checkpoints/demo \
	  --input=$(EXAMPLE) --output_dir=$(OUTPUT_DIR) --overwrite $(DEMO_FLAGS)

# Two worker processes (one per core: most of a test's time is single-threaded XLA compilation),
# each taking whole files; the training tests compile the largest programs and start in fresh ones.
PYTEST := $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMPS)/test
	$(PYTEST) --ignore=tests/train
	$(PYTEST) tests/train

test-all: $(STAMPS)/test
	$(PYTEST) -m "" --ignore=tests/train
	$(PYTEST) -m "" tests/train

bench: $(STAMPS)/test
	for b in rasterizer denoiser vae text_encoder data train compile; do $(PY) -m bench.$$b || exit 1; done

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

examples/held-out-scene/held-out-scene.json: | $(DEMO_DATA)
	$(PY) -m flashworld_jax.data.export_request --data=data/synthetic-validation:validation \
	  --index=0 --num_views=4 --output=examples/held-out-scene

# The stage table's distillation ablations: the same stage without cross-mode consistency, and
# without the out-of-distribution batches.
distill-ablations: $(STAMPS)/runtime $(DEMO_DATA)
	$(TRAIN) --config=configs/train.py:distill_demo --workdir=runs/demo_distill_no_cmc \
	  --config.distill.cmc_weight=0
	$(TRAIN) --config=configs/train.py:distill_demo --workdir=runs/demo_distill_no_ood \
	  --config.distill.ood_weight=0

# README "Results": each stage's exported model scored on the 16 held-out scenes (4 input views at
# stride 1, 4 novel ones), the stage table and the training curves into docs/results.
EVALUATE := $(PY) -m flashworld_jax.evaluate --config=configs/flashworld.py:demo \
  --data=data/synthetic-validation:validation --num_input_views=4 --num_scenes=16
results: $(STAMPS)/runtime $(DEMO_DATA)
	for run in pretrain distill_no_cmc distill_no_ood; do \
	  $(PY) -m flashworld_jax.train.export --workdir=runs/demo_$$run --output=runs/export/$$run || exit 1; done
	$(EVALUATE) --checkpoint=runs/export/pretrain --mode=mv --output=runs/eval/pretrain_mv
	$(EVALUATE) --checkpoint=runs/export/pretrain --num_novel_views=4 --output=runs/eval/pretrain_3d
	$(EVALUATE) --checkpoint=runs/export/distill_no_cmc --num_novel_views=4 --output=runs/eval/distill_no_cmc
	$(EVALUATE) --checkpoint=runs/export/distill_no_ood --num_novel_views=4 --output=runs/eval/distill_no_ood
	$(EVALUATE) --checkpoint=checkpoints/demo --num_novel_views=4 --output=runs/eval/distill
	$(PY) -m flashworld_jax.train.results --output=docs/results \
	  --runs=vae:runs/demo_vae,pretrain:runs/demo_pretrain,distill:runs/demo_distill \
	  --reports="pre-trained MV mode:runs/eval/pretrain_mv,pre-trained 3D mode:runs/eval/pretrain_3d,distilled without CMC:runs/eval/distill_no_cmc,distilled without OOD:runs/eval/distill_no_ood,full distillation (shipped):runs/eval/distill" \
	  --contact_sheet=runs/eval/distill
