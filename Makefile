# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS := dev,speech,data,index,serve,hf,onnx,ray,gen,mllm,t2i

.PHONY: demo test lint typecheck unit browser bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first (lies on this machine's disk); the range in pyproject then installs nothing more.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# open_clip for the OpenCLIP parity test, without its torchvision requirement: PyPI's torchvision does not
	# import beside this torch (the test stubs it; users of OpenCLIP have their own torchvision)
	$(PY) -m pip install -q --no-deps 'open-clip-torch>=3' ftfy wcwidth
	touch $(STAMP)

demo: $(STAMP)
	# (polymodal sets OMP_WAIT_POLICY=PASSIVE itself before torch loads, unless the environment sets it)
	$(PY) -m polymodal quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	# the layer rules (docs/architecture.md) as import contracts: a wrong import fails here
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) browser
	$(VENV)/bin/pytest -q --durations=15

# The browser test (tests/serve/test_browser.py) drives Debian's Chromium through chromedriver. When they are
# missing, install them from the system's apt repositories (sudo unless root; env passes DEBIAN_FRONTEND through
# sudo). Never a browser downloaded from anywhere else. Without apt-get, say what is needed and stop.
browser:
	@if { command -v chromium || command -v chromium-browser; } >/dev/null && command -v chromedriver >/dev/null; then \
	  :; \
	elif command -v apt-get >/dev/null; then \
	  echo "make: installing Debian's chromium + chromium-driver for the browser test (apt-get)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	else \
	  echo "make: the browser test needs chromium and chromedriver, and there is no apt-get here to install them;" \
	       "install both (Debian: apt-get install chromium chromium-driver), then run make test again" >&2; \
	  exit 1; \
	fi

test: lint typecheck unit

bench: $(STAMP)
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache src/*.egg-info
