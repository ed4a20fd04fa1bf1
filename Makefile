# netagg developer entry points. `make install` once, then `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the tests and the demo use (network namespaces, veth, offload control, tc shaping, Mininet), and
# the C compiler, C library headers and Python headers the compiled extensions are built with.
DEB_PACKAGES := iproute2 ethtool mininet net-tools iputils-ping tcpdump procps gcc libc6-dev python3-dev python3-venv
# Sources of the compiled extensions (setup.py lists them, each next to the component that uses it).
NATIVE_SOURCES := setup.py $(wildcard */native/*.c */native/*.h)
# The compiled modules the editable install puts into the source tree (one per extension in setup.py).
NATIVE_MODULES := host_agent/_native softswitch/_native
# FORCE when one is missing: a fresh checkout or a clean.
NATIVE_MISSING := $(foreach m,$(NATIVE_MODULES),$(if $(wildcard $(m).*.so),,FORCE))

.PHONY: install deb venv FORCE test test-unit test-loopback test-netns p4 bench bench-network mininet-demo docker-base docker-test repro-alq repro-powersgd repro-cser repro-bml lint clean

install: deb venv ## set up everything on a fresh machine (idempotent)

deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "not root: install these Debian packages for the C build, the netns tests and the demo: $$missing" >&2; fi; \
	fi

venv: $(VENV)/.installed $(VENV)/.built

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	@# Mininet's Python package comes from Debian; expose just that package to the virtualenv.
	@if [ -d /usr/lib/python3/dist-packages/mininet ]; then \
	  ln -sfn /usr/lib/python3/dist-packages/mininet "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mininet"; fi
	touch $@

# netagg itself, editable, with its C extensions compiled in place by setup.py (which stops with the Debian package
# to install when the compiler or Python's headers are missing). Rebuilt when a source changes or a module is gone.
$(VENV)/.built: $(VENV)/.installed pyproject.toml $(NATIVE_SOURCES) $(NATIVE_MISSING)
	@$(PY) setup.py --check-toolchain
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

FORCE:

test: venv ## the whole default suite (unit, loopback and, as root, netns tiers)
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q -m unit

test-loopback: venv
	$(PY) -m pytest -q -m loopback

test-netns: venv
	$(PY) -m pytest -q -m netns

p4: venv ## regenerate p4/include/generated.p4 and, when p4c is on PATH, the compiled artifacts
	$(PY) -m netagg.p4gen
	@if command -v p4c-bm2-ss >/dev/null; then $(MAKE) -C p4; else echo "p4c-bm2-ss not on PATH: compiled artifacts left as committed"; fi

mininet-demo: venv ## emulated network: N hosts all-reduce through BMv2 (if installed) or the softswitch; needs root
	$(PY) -m examples.mininet $(ARGS)

docker-base: ## a local Debian 12 base image (debootstrap), for machines that cannot pull debian:bookworm; root
	docker/build-base.sh

docker-test: ## conformance, integration tests and demo in containers (docker or podman; root); not part of `make test`
	docker/run-tests.sh $(ARGS)

bench: venv ## speed and memory figures (ratios measured side by side); not part of `make test`
	$(PY) -m bench

bench-network: venv ## netagg vs gloo's ring on one shaped emulated network -> docs/benchmarks/; needs root
	$(PY) -m bench.network $(ARGS)

repro-alq: venv ## ALQ/AMQ and baselines: variance vs bucket size and 4-worker accuracy -> docs/repro/alq.md
	$(PY) -m examples.repro_alq --out docs/repro $(ARGS)

repro-powersgd: venv ## torch's PowerSGD hook through a software switch, 4 workers -> docs/repro/powersgd.md
	$(PY) -m examples.repro_powersgd --out docs/repro $(ARGS)

repro-cser: venv ## CSER, CSER-PL, EF-SGD, QSparse-local-SGD, local SGD: accuracy vs ratio -> docs/repro/cser.md
	$(PY) -m examples.repro_cser --out docs/repro $(ARGS)

repro-bml: venv ## BML on BCube(3,2) vs gloo's ring and netagg, same rate per card -> docs/repro/bml.md; needs root
	$(PY) -m bench.bml $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build
	rm -f $(addsuffix .*.so,$(NATIVE_MODULES))
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
