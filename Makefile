# hf-gnft: every target makes its own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A CPU build of torch where there is no NVIDIA GPU (an unpinned torch pulls a ~5 GB CUDA build).
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test test-slow lint format bench bench-gnft sweep-gnft bench-defenses bench-tsbd bench-purify bench-lasting bench-lasting-1000 attack-table attack-table-paper bench-paper bench-paper-cpu observation \
	scan-validation clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) recipes/demo.py --output_dir outputs/demo

lint: $(STAMP)
	$(PY) -m ruff check hf_gnft recipes tests benchmarks
	$(PY) -m ruff format --check hf_gnft recipes tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format hf_gnft recipes tests benchmarks
	$(PY) -m ruff check --fix hf_gnft recipes tests benchmarks

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=20

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench.py

bench-gnft: $(STAMP)
	$(PY) benchmarks/bench_gnft.py

sweep-gnft: $(STAMP)  # the three stages behind the README's sweep, resumable; about 3 hours on 2 cores
	$(PY) benchmarks/sweep_gnft.py --defenses FT "FT 2x epochs" "GN-FT global" "GN-FT per-tensor"
	$(PY) benchmarks/sweep_gnft.py --seeds 0 --learning_rates 0.1 --defenses "GN-FT global r=0.2" \
		"GN-FT global r=0.5" "GN-FT global r=0.2 alpha=1" "GN-FT global r=0.2 warm-up" "GN-FT global 10 epochs"
	$(PY) benchmarks/sweep_gnft.py --seeds 0 --defenses "FT AdamW" "GN-FT AdamW global" "GN-FT AdamW global r=0.2"
	$(PY) benchmarks/sweep_gnft.py --defenses "GN-FT global r=0.2 warm-up"
	$(PY) benchmarks/sweep_gnft.py --learning_rates 0.003 --defenses "FT AdamW" "GN-FT AdamW global r=0.2" \
		"FT AdamW 2x epochs"

bench-defenses: $(STAMP)  # the small defense grid, then the ANP variants on its noise-burst suspects; resumable
	$(PY) recipes/benchmark.py benchmarks/grids/small.yaml
	$(PY) recipes/benchmark.py benchmarks/grids/anp-variants.yaml

bench-tsbd: $(STAMP)  # TSBD beside FT and GN-FT on the small grid's suspects, with the retuning check; resumable
	$(PY) recipes/benchmark.py benchmarks/grids/tsbd.yaml

bench-purify: $(STAMP)  # purification beside GN-FT, FT and TSBD on the small grid's suspects, with the retuning and re-inversion checks; resumable
	$(PY) recipes/benchmark.py benchmarks/grids/purify.yaml

bench-lasting: $(STAMP)  # purify beside FT and the true-trigger oracle, with the relapse, retuning and re-inversion checks; resumable, hours on 2 cores
	$(PY) recipes/benchmark.py benchmarks/grids/lasting.yaml

bench-lasting-1000: $(STAMP)  # the lasting grid's checks with 1,000 clean clips instead of 200; resumable, a day on 2 cores
	$(PY) recipes/benchmark.py benchmarks/grids/lasting-1000.yaml

observation: $(STAMP)  # GN-FT's observation on the small grid's suspects, before and after GN-FT; resumable
	$(PY) benchmarks/observation.py

scan-validation: $(STAMP)  # the backdoor scan on a zoo of backdoored and clean tiny models; resumable, hours on 2 cores
	$(PY) benchmarks/scan_validation.py

# Then tiny Data2VecAudio with every trigger and clean at twice the epochs (51% CA at 15): rows beside the recipe's;
# and its PBSM, still under-fitted at 30, at three times.
attack-table: $(STAMP)  # tiny speech transformers x the reference triggers; resumable
	$(PY) benchmarks/attack_table.py
	$(PY) benchmarks/attack_table.py --models tiny-data2vec-audio --clean --num_train_epochs 30
	$(PY) benchmarks/attack_table.py --models tiny-data2vec-audio --triggers pbsm --num_train_epochs 45

# First lstmwithattention at twice the recipe's epochs with every trigger (at 15 it learns the words only to 74-84%
# CA; rows beside the recipe's), its noise burst at three times and at twice with twice the learning rate, then every
# family at the recipe's 15 epochs (largecnn and rnn: hours each on 2 cores).
attack-table-paper: $(STAMP)  # the GN-FT paper's MFCC networks x the reference triggers, and each trained clean; resumable
	$(PY) benchmarks/attack_table.py --models lstmwithattention --num_train_epochs 30 \
		--table attack_table_paper --output_dir outputs/paper/suspects
	$(PY) benchmarks/attack_table.py --models lstmwithattention --triggers noise_burst --num_train_epochs 45 \
		--table attack_table_paper --output_dir outputs/paper/suspects
	$(PY) benchmarks/attack_table.py --models lstmwithattention --triggers noise_burst --num_train_epochs 30 \
		--learning_rate 4e-3 --table attack_table_paper --output_dir outputs/paper/suspects
	$(PY) benchmarks/attack_table.py --models smallcnn smalllstm lstmwithattention resnet largecnn rnn --clean \
		--table attack_table_paper --output_dir outputs/paper/suspects

bench-paper: $(STAMP)  # the paper's setting on its MFCC networks (benchmarks/grids/paper.yaml); resumable, long
	$(PY) recipes/benchmark.py benchmarks/grids/paper.yaml

bench-paper-cpu: $(STAMP)  # the part of the paper's grid that fits 2 CPU cores: GN-FT against FT on smallcnn and smalllstm; resumable
	$(PY) recipes/benchmark.py benchmarks/grids/paper-cpu.yaml

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
