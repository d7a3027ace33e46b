# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Both set up everything first, idempotently: Debian packages, gVisor, dockerd, the venv
# and the offline builder image.
VENV ?= .venv
FARM := $(VENV)/bin/farm
PYTHON ?= python3
export FARM_HOME ?= $(HOME)/.local/share/farm

.PHONY: setup tools apiserver manifests wheels images dashboard-png demo test lint bench test-crates

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
	$(FARM) host setup
	$(FARM) image build rust
	$(FARM) image build rust --suite trixie

# helm, kubectl (kustomize), promtool and prometheus for the packaging tests (tests/k8s).
tools: $(VENV)/.installed
	$(VENV)/bin/python -m farm.devtools

# The real Kubernetes 1.36 custom-resource API server and etcd for tests/k8s, built once
# from Debian sid's packages in a throw-away chroot (needs root and mmdebstrap, which
# `setup` installs; ~3 min, 4.3 GB temporary disk) and cached in .tools/apiserver.
apiserver: $(VENV)/.installed
	$(VENV)/bin/python -m farm.devapiserver

# Regenerate manifests/base and manifests/monitoring from helm/farm (tests/k8s checks drift).
manifests: tools
	$(VENV)/bin/python -m farm.chart

# farm and its dependencies as wheels: the farm image (controller, node monitor,
# collector) installs from these, so its build needs no PyPI access (air-gapped: copy
# dist/wheels over, or pass it to `farm image build farm --wheelhouse dist/wheels`).
wheels: $(VENV)/.installed
	rm -rf dist/wheels
	$(VENV)/bin/pip wheel --quiet --wheel-dir dist/wheels .

# Refresh docs/dashboard.png: the dashboard's queries from a live run (needs setup).
dashboard-png: setup tools
	FARM_DASHBOARD_PNG=$(CURDIR)/docs/dashboard.png $(VENV)/bin/pytest -q tests/e2e/test_prometheus_live.py

VERSION ?= 0.1.0
# The cluster's images from a registry base; without a registry use `farm image build
# farm|fetch|rust` and `farm image export` instead (docs/packaging.md).
images: wheels
	docker build -f containers/farm/Dockerfile -t farm/farm:$(VERSION) .
	docker build -f containers/farm/Dockerfile --target fetch -t farm/fetch:$(VERSION) .

demo: setup
	$(VENV)/bin/python examples/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check farm tests bench examples
	$(VENV)/bin/ruff format --check farm tests bench examples

# Real crates.io crates from Debian's signed source archive, cached (tests/realcrates.py).
test-crates: $(VENV)/.installed
	$(VENV)/bin/python -m tests.realcrates

test: setup tools apiserver lint test-crates
	$(VENV)/bin/pytest

# The whole realworld corpus (docs/realworld.md): five bookworm programs and hexyl on
# trixie, each built twice in gVisor from a loopback mirror of Debian-derived crates. A
# plain `make test` runs only the CI program (exa). Downloads are cached in FARM_REALWORLD_CACHE.
.PHONY: realworld
realworld: setup
	$(VENV)/bin/pytest -m realworld tests/realworld

# docs/performance.md's figures and chart. levers.py runs runc and runsc directly (root)
# and flips the host's THP shmem setting for its `thp` runs only, restoring it after each.
PERF_DATA := docs/performance-data
bench: setup
	$(VENV)/bin/python bench/run.py --runs 5 --out $(PERF_DATA)/run.json
	$(VENV)/bin/python bench/repro.py
	$(VENV)/bin/python bench/levers.py --runs 5 --variants ptrace,systrap,thp,systrap-thp,dcache,exclusive --out $(PERF_DATA)/levers.json
	$(VENV)/bin/python bench/starts.py --starts 20 --out $(PERF_DATA)/starts.json
	$(VENV)/bin/python bench/layers.py --runs 5 --out $(PERF_DATA)/layers.json
	$(VENV)/bin/python bench/chart.py --data $(PERF_DATA) --out docs/performance.png

# The corpus's cold builds under gVisor and runc (about 40 min), then the chart again.
.PHONY: bench-realworld
bench-realworld: setup
	$(VENV)/bin/python bench/realworld.py --out $(PERF_DATA)/realworld.json
	$(VENV)/bin/python bench/chart.py --data $(PERF_DATA) --out docs/performance.png

# runsc's CPU profile of a cold hello-serde build (benchmark only: --profile loosens
# seccomp). `go tool pprof` comes from Debian's golang-go, installed here, not by setup.
.PHONY: profile
profile: setup
	command -v go >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go
	$(VENV)/bin/python bench/profile.py
