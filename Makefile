# make demo   - a real CAM on a real photo, offline, with the packaged pretrained model
# make test   - create .venv if needed, install the package and test deps, run the tests
# make lint   - ruff: lint (pyflakes, import order, private members) and the format check
# make docs   - the documentation site (MkDocs Material) into site/, offline, --strict
# make bench  - the speed/memory benchmark table
# make grid   - re-render the README's comparison grids (docs/*.jpg; minutes on a CPU)
# make detection-picture - the README's detector picture (docs/detection_two_boxes.jpg) from the committed tiny detector; trains it (~4 min of one CPU core) only if docs/data/tiny_detector.pt is missing
# make video-picture - the README's video strip (docs/video_strip.jpg): trains a tiny 3D CNN (~20 s on a CPU)
# make metrics - every method x every metric on EfficientNet-Lite0 (docs/metrics.md, docs/sanity_check.png; ~45 min on 2 loaded CPU threads)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint docs bench grid detection-picture video-picture metrics venv clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,demo,explore,docs]"
	$(PY) -m pip install -q --no-deps -c constraints.txt ultralytics
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) cam.py --image-path examples/cat.jpg --method gradcam --model efficientnet_lite0 --output-dir out

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/bench.py

grid: $(STAMP)
	$(PY) docs/make_grid.py --no-progress

detection-picture: $(STAMP)
	$(PY) docs/make_detection_picture.py

video-picture: $(STAMP)
	$(PY) docs/make_video_strip.py

metrics: $(STAMP)
	$(PY) docs/make_metrics_table.py --no-progress

clean:
	rm -rf $(VENV) out site .pytest_cache
