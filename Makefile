# vitlab: every target sets the project up first (a stamp file), so on a fresh
# clone `make test` or `make train` is the only command needed.
#
#   make setup   create .venv and install vitlab with the lab, dev and pretrained extras
#   make test    lint (ruff) + unit tests + every notebook executed by nbval (quick mode)
#   make lint    ruff check on the package, tests, notebooks, bench and tools
#   make lab     JupyterLab on the notebooks
#   make unit    unit tests only (no notebooks)
#   make html    the course website in site/: every lesson executed, API reference (QUICK=1: fast)
#   make handouts  student notebooks in handouts/: no worked solutions, an autograder cell per exercise
#   make clean   remove the venv, caches, rendered site and handouts
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
QUICK  ?= 0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[lab,dev,pretrained,docs]"
	touch $(STAMP)

.PHONY: setup test unit lint lab html handouts clean

setup: $(STAMP)

# nbval runs every notebook with the venv's own Python (--nbval-current-env), never a kernel
# some other environment registered; only cells tagged nbval-check-output are compared.
# A lint failure fails the suite before any test runs.
test: $(STAMP) lint
	VITLAB_QUICK=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=1200 -p no:cacheprovider -p tools.lesson_times

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# Sphinx + myst-nb + sphinx-book-theme; open site/index.html. EXECUTE="00 01" runs only those lessons.
EXECUTE ?= all
html: $(STAMP)
	VITLAB_QUICK=$(QUICK) $(BIN)/python tools/build_site.py --out site --execute $(EXECUTE)

# Student notebooks (a few seconds): one per lesson, each worked solution replaced by a stub that stops with
# "not done yet" and its asserts kept as an autograder cell (tools/handouts.py; handouts/ is git-ignored).
handouts: $(STAMP)
	$(BIN)/python tools/handouts.py --out handouts

clean:
	rm -rf $(VENV) site handouts .pytest_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# The main job: train make train's MNIST model (cct_mnist: a compact convolutional transformer, CCT-2/3x2;
# issue 24's search found it the most accurate in 10 minutes of a 2-core CPU), evaluate on the test set,
# print the accuracy. As many of the recipe's 20 epochs as fit in 10 minutes on this machine (the step time
# is measured first, then the first epoch's), so that the whole job stays within 15 minutes on a slow
# 2-core CPU. MODEL=vit_mnist trains the course's plain ViT instead (the lessons' weights/vit_mnist), as
# make train did before 2026-12-07.
# Interrupted? Run it again: --resume continues from the last finished epoch (and a finished run
# is only re-evaluated). Delete $(RUN) to start over. VAL_SIZE: cct_mnist was searched with 2,000
# validation images (58,000 train); vit_mnist's recipe keeps its 10 %.
MODEL ?= cct_mnist
RUN ?= runs/$(MODEL)
TRAIN_BUDGET_S ?= 600
VAL_SIZE ?= $(if $(filter cct_mnist,$(MODEL)),2000,0.1)
.PHONY: train
train: $(STAMP)
	$(BIN)/python -m vitlab train --model $(MODEL) --dataset mnist --epochs 20 --val-size $(VAL_SIZE) \
		--time-budget $(TRAIN_BUDGET_S) --out $(RUN) --resume

# Throughput of vitlab's presets vs timm's twins (timm is a bench-only extra).
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[lab,dev,pretrained,docs,bench]"
	touch $(BENCH_STAMP)

# Every preset, fp32 and bf16, training and inference, vitlab vs timm, torch.compile on the side; the
# results go to bench/results.json and .md (about 30 minutes on a 2-core CPU, where bf16 is emulated).
.PHONY: bench bench-page
bench: $(BENCH_STAMP)
	$(BIN)/python bench/bench.py --json bench/results.json --markdown bench/results.md

# Paste the tables of bench/results.json into the site's Throughput page, docs/bench.md (a few seconds).
bench-page: $(STAMP)
	$(BIN)/python bench/bench.py --from bench/results.json --page docs/bench.md

# bf16 vs fp32 accuracy (the site's Precision page): vit_mnist, 3 epochs, seeds 0 and 1, in each precision (the
# fp32 runs equal make pooling's class-token ones). On a CPU without AMX bf16 is emulated: about 35 minutes.
.PHONY: precision
precision: $(STAMP)
	for s in 0 1; do for p in fp32 bf16; do \
		$(BIN)/python -m vitlab train --model vit_mnist --dataset mnist --epochs 3 --seed $$s --precision $$p \
			--experiment precision --out runs/precision-$$p-s$$s --quiet --resume || exit 1; \
	done; done

# On a machine with an NVIDIA GPU, within 10 minutes (each step killed with its children at its limit; tools/gpu_check.py
# lists what runs and the CPU cost each limit was planned from): the device-path unit tests on CUDA (about 4 min),
# lessons 06, 13, 15 and 16 in quick mode (about 2 min), vit_cifar_small and ResNet-20 trained in bf16 on the
# full CIFAR-10 for 30 s each (about 70 s each with loading and testing), the bench of three presets (1.5 min).
# Needs VITLAB_DATA (MNIST, CIFAR-10); one summary in reports/gpu-check/.
.PHONY: gpu-check
gpu-check: $(BENCH_STAMP)
	$(BIN)/python tools/gpu_check.py --out reports/gpu-check

# The report's comparison runs (about 50 minutes on a 2-core CPU): on MNIST the ViT and three CNNs
# with one recipe and one wall-clock budget (that of `make train`'s 20 epochs on the first machine
# used); on CIFAR-10 (the 12,000-image subset the recorded runs used), ViT vs ResNet-18 with 10 minutes each.
MNIST_BUDGET_S := 325
CIFAR_BUDGET_S := 600
.PHONY: baselines report
baselines: $(STAMP)
	for m in vit_mnist simple_cnn vgg11 resnet18; do \
		$(BIN)/python -m vitlab train --model $$m --dataset mnist --lr 2e-3 --weight-decay 0.05 --warmup-epochs 1 \
			--augment digits --time-budget $(MNIST_BUDGET_S) --out runs/mnist-$$m --quiet --resume || exit 1; \
	done
	for m in vit_cifar_small resnet18; do \
		$(BIN)/python -m vitlab train --model $$m --dataset cifar10-subset --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 \
			--label-smoothing 0.1 --augment cifar-strong --time-budget $(CIFAR_BUDGET_S) --out runs/cifar10-$$m \
			--quiet --resume || exit 1; \
	done

# The report's transfer-learning experiment (lesson 12): pretrain vit_cifar_small on five CIFAR-10 classes, then
# transfer to the other five with 1/10/100 % of their labels, four ways, equal 20-second budgets. The recorded
# runs were made on one H200 GPU (DEVICE=cuda, about 7 minutes); on a 2-core CPU the budgets buy far less.
DEVICE ?= auto
.PHONY: transfer
transfer: $(STAMP)
	$(BIN)/python tools/transfer_experiment.py --out runs/transfer --device $(DEVICE) --workers 4 \
		--pretrain-budget 160 --pretrain-epochs 150 --budget 20 --seeds 0 1 2 --seeds-full 2

# The report's DeiT experiment on MNIST (lesson 13): a small-CNN teacher (10 epochs), then vit_mnist, deit_mnist
# without a teacher, with soft and with hard distillation, 5 epochs each, seeds 0 and 1 (about 40 minutes on a
# 2-core CPU). The CIFAR-10 half ran on a GPU: python tools/deit_experiment.py --dataset cifar10 --device cuda
# --workers 4 --seeds 0 --teacher-epochs 6 --epochs 5
.PHONY: deit deit-few deit-few-long deit-noisy
deit: $(STAMP)
	$(BIN)/python tools/deit_experiment.py --dataset mnist --out runs/deit --seeds 0 1

# Lesson 13's few-label setting (about 15 minutes on a 2-core CPU): the students get 1,000 labelled digits, the
# teacher (the shipped small CNN) was trained on all 54,000; 40 epochs, seeds 0-2; soft distillation as DeiT's
# (T = 3, alpha 0.1).
deit-few: $(STAMP)
	$(BIN)/python tools/deit_experiment.py --dataset mnist --subset 1000 --epochs 40 --seeds 0 1 2 \
		--teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 --soft-alpha 0.1 --experiment deit-few \
		--out runs/deit-few

# The same 1,000 labelled digits with enough optimizer steps to fit them (about 36 minutes on a 2-core CPU, two
# runs at a time): 200 epochs of batch 32 (6,200 steps, 22 times deit-few's 280), lr 1e-3, seeds 0-2.
deit-few-long: $(STAMP)
	$(BIN)/python tools/deit_experiment.py --dataset mnist --subset 1000 --epochs 200 --batch-size 32 --lr 1e-3 \
		--seeds 0 1 2 --teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 --soft-alpha 0.1 \
		--experiment deit-few-long --out runs/deit-few-long --workers 2

# The same students, teacher and recipe, but 40 % of the 1,000 labels wrong (symmetric noise, seeded; the teacher's
# knowledge is clean): where the teacher knows the images better than their labels (about 37 minutes on a 2-core CPU).
deit-noisy: $(STAMP)
	$(BIN)/python tools/deit_experiment.py --dataset mnist --subset 1000 --label-noise 0.4 --epochs 200 \
		--batch-size 32 --lr 1e-3 --seeds 0 1 2 --teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 \
		--soft-alpha 0.1 --experiment deit-noisy --out runs/deit-noisy --workers 2

# The report's Swin experiment (lesson 14): Swin vs ViT vs ResNet-18 with one recipe and one wall-clock budget per
# dataset on one machine, on the full CIFAR-10 (10 minutes each) and on MNIST (325 s each, as the baselines); about
# 47 minutes on a 2-core CPU. Recorded runs: runs/swin-*.
SWIN_CIFAR_BUDGET_S := 600
.PHONY: swin
swin: $(STAMP)
	for m in swin_cifar vit_cifar_small resnet18; do \
		$(BIN)/python -m vitlab train --model $$m --dataset cifar10 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 \
			--label-smoothing 0.1 --augment cifar --time-budget $(SWIN_CIFAR_BUDGET_S) --experiment swin \
			--out runs/swin-cifar10-$$m --quiet --resume || exit 1; \
	done
	for m in swin_mnist vit_mnist resnet18; do \
		$(BIN)/python -m vitlab train --model $$m --dataset mnist --lr 2e-3 --weight-decay 0.05 --warmup-epochs 1 \
			--augment digits --time-budget $(MNIST_BUDGET_S) --experiment swin --out runs/swin-mnist-$$m \
			--quiet --resume || exit 1; \
	done

# Lesson 02's comparison: class-token vs mean pooling, vit_mnist for 3 epochs (the same budget: both
# readouts cost the same), 3 seeds each; about 8 minutes on a 2-core CPU. Runs go to runs/pooling-*;
# the recorded ones are in reports/runs/.
.PHONY: pooling
pooling: $(STAMP)
	for s in 0 1 2; do for p in cls mean; do \
		$(BIN)/python -m vitlab train --model vit_mnist --model-arg pool=$$p --dataset mnist --epochs 3 --seed $$s \
			--experiment pooling --out runs/pooling-$$p-s$$s --quiet --resume || exit 1; \
	done; done

# Lesson 07 in full mode (12,000 images, 4 epochs, 3 seeds; about 27 minutes on a 2-core CPU): its
# results go to reports/tuning/lesson07.csv, which the lesson's section 9 reads back.
.PHONY: tuning
tuning: $(STAMP)
	mkdir -p reports/tuning
	VITLAB_QUICK=0 VITLAB_RECORD=$(CURDIR)/reports/tuning/lesson07.csv $(BIN)/jupyter nbconvert --to notebook \
		--execute notebooks/07_hyperparameters.ipynb --output-dir build/tuning --ExecutePreprocessor.timeout=7200

# Lesson 15's experiments (about 50 minutes on a 2-core CPU; recorded runs: reports/runs/exits-*, dino-*), in
# three steps that can run separately: early exits trained with and without self-distillation (the same steps); DINO pretraining without labels on MNIST and on the full CIFAR-10; then fine-tuning each DINO backbone
# with 1 % and 10 % of the labels (MNIST) against the same model from scratch, for the same number of epochs.
# Early exits: the same steps with and without self-distillation (what 5- and 8-minute budgets bought here).
EXITS_MNIST_STEPS := --epochs 13
EXITS_CIFAR_STEPS := --epochs 3 --max-steps-per-epoch 270
DINO_MNIST_BUDGET_S := 600
DINO_CIFAR_BUDGET_S := 300
DINO_FLAGS := --out-dim 256 --momentum-teacher 0.99 --freeze-last-layer-epochs 0.5 --epochs 50 --experiment dino --quiet
.PHONY: selfdistill selfdistill-exits selfdistill-dino selfdistill-labels
selfdistill: selfdistill-exits selfdistill-dino selfdistill-labels

selfdistill-exits: $(STAMP)
	for d in self none; do \
		$(BIN)/python -m vitlab train --model vit_mnist_exits --dataset mnist --distill $$d --distill-alpha 0.5 \
			--distill-tau 3 $(EXITS_MNIST_STEPS) --experiment exits --out runs/exits-mnist-$$d \
			--quiet --resume || exit 1; \
		$(BIN)/python -m vitlab train --model vit_cifar_small_exits --dataset cifar10 --distill $$d \
			--distill-alpha 0.5 --distill-tau 3 $(EXITS_CIFAR_STEPS) --experiment exits \
			--out runs/exits-cifar10-$$d --quiet --resume || exit 1; \
	done

selfdistill-dino: $(STAMP)
	$(BIN)/python -m vitlab pretrain --method dino --model vit_mnist --dataset mnist --global-scale 0.5 1 \
		--local-scale 0.25 0.5 --time-budget $(DINO_MNIST_BUDGET_S) $(DINO_FLAGS) --out runs/dino-mnist --resume
	$(BIN)/python -m vitlab pretrain --method dino --model vit_cifar_small --dataset cifar10 \
		--time-budget $(DINO_CIFAR_BUDGET_S) $(DINO_FLAGS) --out runs/dino-cifar10 --resume

# Few labels (lesson 15; about 10 minutes on a 2-core CPU): vit_mnist from the shipped DINO backbone against
# the same model from scratch, on 540 and 5,400 labelled digits, one recipe and exactly 1,000 optimizer steps
# for both starts, seeds 0-2 (tools/few_labels_experiment.py).
selfdistill-labels: $(STAMP)
	$(BIN)/python -m tools.few_labels_experiment --out runs/dino-labels

# Lesson 15 in full mode (a few minutes): its collapse demo's three trajectories (DINO at its scaled learning
# rate, without centering, without sharpening) go to reports/tuning/lesson15-collapse.csv, which the lesson quotes.
.PHONY: lesson15
lesson15: $(STAMP)
	mkdir -p reports/tuning
	VITLAB_QUICK=0 VITLAB_RECORD=$(CURDIR)/reports/tuning/lesson15-collapse.csv $(BIN)/jupyter nbconvert --to notebook \
		--execute notebooks/15_self_distillation.ipynb --output-dir build/lesson15 --ExecutePreprocessor.timeout=3600

# Lesson 09 in full mode (a few minutes): the deletion and insertion areas of its maps on 200 MNIST and 200
# CIFAR-10 test images go to reports/tuning/lesson09-curves.json, which the lesson quotes.
.PHONY: lesson09
lesson09: $(STAMP)
	mkdir -p reports/tuning
	VITLAB_QUICK=0 VITLAB_RECORD=$(CURDIR)/reports/tuning/lesson09-curves.json $(BIN)/jupyter nbconvert --to notebook \
		--execute notebooks/09_attention_maps.ipynb --output-dir build/lesson09 --ExecutePreprocessor.timeout=3600

# Lesson 08's data efficiency (about 30 minutes on a 2-core CPU): vit_mnist and simple_cnn on 500 to 54,000
# training digits, exactly 1,500 optimizer steps each, seeds 0-2 (tools/efficiency_experiment.py).
.PHONY: efficiency
efficiency: $(STAMP)
	$(BIN)/python -m tools.efficiency_experiment --out runs/efficiency

# Lesson 10's CIFAR-10 studies on a CPU (tools/cifar_experiment.py; runs in runs/cifar/, resumable):
# cifar-search: the transformer recipe search, successive halving on validation accuracy (12 candidates x 5 min,
#   the best 2 ViTs and 2 CCTs x 15 min, the best of each x 30 min x 2 seeds: about 4 hours);
# crossover: ViT, CCT, ResNet-20 and ResNet-18 at 2, 5, 10, 30 (2 seeds) and 60 minutes (1 seed): about 10 hours.
.PHONY: cifar-search crossover
cifar-search: $(STAMP)
	$(BIN)/python tools/cifar_experiment.py search

crossover: $(STAMP)
	$(BIN)/python tools/cifar_experiment.py crossover

# Rebuild reports/REPORT.md from the recorded runs (or from RUNS="runs/a runs/b ...").
RUNS ?= $(sort $(wildcard reports/runs/*))
report: $(STAMP)
	$(BIN)/python -m vitlab report $(RUNS) --out reports

# Lesson 16's runs (about 77 minutes on a 2-core CPU: 10-16 per Segmenter, 20 per YOLOS): segmentation (Segmenter, linear and mask-transformer
# decoders) and detection (YOLOS) on the MNIST canvases, each encoder from scratch or from the shipped MNIST
# classifier (weights/vit_mnist). Then: vitlab report reports/runs/* runs/dense-* --out reports
DENSE_FLAGS ?= --experiment dense --resume --quiet
.PHONY: dense
dense: $(STAMP)
	$(BIN)/python -m vitlab train --task segment --model segmenter_linear_canvas --out runs/dense-seg-linear $(DENSE_FLAGS)
	$(BIN)/python -m vitlab train --task segment --model segmenter_linear_canvas --init weights/vit_mnist \
		--out runs/dense-seg-linear-init $(DENSE_FLAGS)
	$(BIN)/python -m vitlab train --task segment --model segmenter_mask_canvas --init weights/vit_mnist \
		--out runs/dense-seg-mask-init $(DENSE_FLAGS)
	$(BIN)/python -m vitlab train --task detect --model yolos_canvas --out runs/dense-det-yolos $(DENSE_FLAGS)
	$(BIN)/python -m vitlab train --task detect --model yolos_canvas --init weights/vit_mnist \
		--out runs/dense-det-yolos-init $(DENSE_FLAGS)

# The robustness study (issue 25; about 20 minutes on a 2-core CPU once its runs exist): vitlab robustness on
# vit_mnist vs simple_cnn (make efficiency's 54,000-image runs, seeds 0-1), the shipped DeiT and Swin, and the
# 30-minute CIFAR-10 ViT vs ResNet-20 (make crossover); records in reports/robustness/ (tools/robustness_study.py).
.PHONY: robustness
robustness: $(STAMP)
	$(BIN)/python -m tools.robustness_study
