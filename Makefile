# Set-up is part of every target: the venv in .venv/ is created or refreshed when pyproject.toml
# changes (fast no-op otherwise). Everything here runs offline once packages are installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORDNET_STAMP := $(VENV)/.wordnet-stamp

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup wordnet java test demo bench device-wheels clean-demo

setup: $(STAMP)

# constraints.txt: the package versions the suite last passed with (a registry's newer releases
# moved trained tiny models' numbers before); pip itself stays unpinned
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# WordNet for EDA and synonym attacks: nltk.download when online, else Debian's wordnet-base.
wordnet: $(WORDNET_STAMP)

$(WORDNET_STAMP): $(STAMP)
	$(BIN)/augment setup-wordnet || { \
	  echo "installing Debian's wordnet-base for an offline WordNet"; \
	  (apt-get install -y --no-install-recommends wordnet-base || \
	   (apt-get update -q && apt-get install -y --no-install-recommends wordnet-base)) >/dev/null && \
	  $(BIN)/augment setup-wordnet; }
	touch $(WORDNET_STAMP)

# Java for captioning's METEOR and COCO's PTBTokenizer (pycocoevalcap runs their jars); the tests need it
java:
	@command -v java >/dev/null || { \
	  echo "installing Debian's default-jre-headless for METEOR and COCO's PTBTokenizer"; \
	  (apt-get install -y --no-install-recommends default-jre-headless || \
	   (apt-get update -q && apt-get install -y --no-install-recommends default-jre-headless)) >/dev/null; }

# pytest-xdist workers (tests/conftest.py gives each its share of the CPUs); whole test files go to one
# worker, so a module's fixtures are built once; TEST_WORKERS=0 runs the suite in this process.
# --max-worker-restart 0: a test that crashes its worker (a segfault) fails the run naming that test;
# restarted, loadfile's scheduler can deadlock at the end of the run (pytest-xdist #784, #1313) and CI hung
TEST_WORKERS ?= 2
test: $(STAMP) wordnet java
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0

demo: $(STAMP) wordnet
	$(BIN)/python -m analysis.demo

bench: $(STAMP) wordnet
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python -m pip install -q --no-deps torchattacks
	$(BIN)/python -m bench

# the wheels a lent GPU machine lacks (bench/device_wheels.txt), for bench.device_check there
# (README, "Measuring on a GPU machine"); cp312 manylinux x86-64, as that machine runs
device-wheels: $(STAMP)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl -r bench/device_wheels.txt

clean-demo:
	rm -rf outputs/demo
