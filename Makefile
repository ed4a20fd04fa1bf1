# netagg developer entry points. `make install` once, then `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the tests and the demo use (network namespaces, veth, offload control, tc shaping, Mininet).
DEB_PACKAGES := iproute2 ethtool mininet net-tools iputils-ping tcpdump procps

.PHONY: install deb venv test test-unit test-loopback test-netns p4 bench mininet-demo docker-test lint clean

install: deb venv ## set up everything on a fresh machine (idempotent)

deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "not root: install these Debian packages for the netns tests and the demo: $$missing" >&2; fi; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@# Mininet's Python package comes from Debian; expose just that package to the virtualenv.
	@if [ -d /usr/lib/python3/dist-packages/mininet ]; then \
	  ln -sfn /usr/lib/python3/dist-packages/mininet "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mininet"; fi
	touch $@

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

docker-test: ## conformance + integration suites against BMv2 in a container (needs a Docker engine)
	docker/run-tests.sh $(ARGS)

bench: venv ## speed and memory figures (ratios measured side by side); not part of `make test`
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
