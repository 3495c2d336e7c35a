# The two commands of the README:  make demo  (install + run the demo pipeline)  and  make test.
# Both create .venv when missing and reinstall only when pyproject.toml or constraints.txt change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# DVC and Snakemake run `python -m pipeline.stages...`: make that the venv's python.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test ablation lock params clean-demo screenshots

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

demo: $(STAMP)
	dvc repro
	python -m pipeline.stages.summary

# The paper's ablation on params.yaml: the full recipe (reproduced first, so the variants reuse its
# cached stages) and one DVC experiment per technique switched off -> reports/ablation.{csv,md,png}.
ablation: $(STAMP)
	dvc repro
	python -m pipeline.dag.ablation $(ABLATION_ARGS)

# The README's MLflow pictures (docs/images/mlflow-*.png): a tiny `dvc repro` in a temporary copy of the
# project, `mlflow ui` on 127.0.0.1 over it, headless Chromium (Debian: apt-get install chromium).
screenshots: $(STAMP)
	python scripts/screenshots.py --out docs/images

test: $(STAMP)
	ruff check .
	ruff format --check .
	python -m pytest -n 2 -q

# Re-lock every transitive dependency after editing pyproject.toml's pins, and the rules' conda env with it.
lock: $(STAMP)
	{ echo "# Lock file: every package of the environment, exact versions (Linux x86_64, Python 3.11)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(VENV)/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	$(VENV)/bin/python envs/conda_env.py

# params.yaml is the schema's defaults written out in full; regenerate after changing pipeline/core/params.py
# or a dataset's params section (pipeline/data/sections/).
params: $(STAMP)
	python -m pipeline.stages.params --params /dev/null --out params.yaml
