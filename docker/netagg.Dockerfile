# syntax=docker/dockerfile:1
#
# Images for testing netagg in a container (see docker/README.md; docker/run-tests.sh builds and runs them).
#
#   softswitch  Debian 12 (DEBIAN_IMAGE: debian:bookworm, or the local base `make docker-base` builds) set up with
#               `make install`: runs the conformance suite, the integration tests and the demo on the softswitch.
#   bmv2        p4lang/behavioral-model (simple_switch_grpc) + Mininet + this project in a Python 3.11 venv:
#               the same, on the softswitch and on BMv2.
#   p4c-check   p4lang/p4c: compiles p4/v1model/main.p4 and compares the result with the committed artifacts.
#
# Build from the repository root (the build context must be the repository):
#   docker build -f docker/netagg.Dockerfile --target softswitch -t netagg-test:softswitch .
#   docker build -f docker/netagg.Dockerfile --target bmv2 -t netagg-test:bmv2 .
#   docker build -f docker/netagg.Dockerfile --target p4c-check .
# The tests need a privileged container: docker run --rm --privileged --network none netagg-test:softswitch

ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm
ARG BMV2_IMAGE=docker.io/p4lang/behavioral-model:latest
ARG P4C_IMAGE=docker.io/p4lang/p4c:latest

# ---------------------------------------------------------------------------------------------------------------
FROM ${P4C_IMAGE} AS p4c-check
# 1: fail when the image's p4c output differs from the committed artifacts; 0: only check that it compiles.
ARG P4C_COMPARE=1
WORKDIR /netagg
COPY p4/ p4/
# p4c runs from the repository root on relative paths, as p4/Makefile does, so the source references in the
# JSON are the same whichever directory the output goes to.
RUN mkdir -p p4check \
 && p4c-bm2-ss --arch v1model --std p4-16 -o p4check/netagg.json \
        --p4runtime-files p4check/netagg.p4info.txtpb p4/v1model/main.p4 \
 && if [ "$P4C_COMPARE" = 1 ]; then \
        diff -u p4/v1model/build/netagg.p4info.txtpb p4check/netagg.p4info.txtpb \
     && cmp p4/v1model/build/netagg.json p4check/netagg.json \
     && echo "committed P4 artifacts are current for $(p4c-bm2-ss --version | head -n 1)"; \
    fi

# ---------------------------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS softswitch
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
# Where to get torch's CPU build (requirements.txt pins the version; PyPI's build of it is the multi-GB CUDA one).
# Empty: from the configured pip indexes, as `make install` does on the build machine.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A pip configuration mounted into the build (docker/run-tests.sh passes the build machine's with podman); unset:
# pip's defaults. Not stored in the image.
ARG PIP_CONFIG_FILE
# What a bare Debian needs to run `make install`: make, Python 3.11 with venv, certificates for pip.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates make python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /netagg
# `make install` in two steps, so that editing the source does not reinstall the dependencies: the Debian
# packages and the virtualenv from requirements.txt first, netagg itself (C extensions included) after COPY.
COPY Makefile requirements.txt ./
RUN make deb \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv .venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        .venv/bin/pip install -q --extra-index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' requirements.txt)"; \
    fi \
 && make .venv/.installed
COPY . .
RUN make install \
 && .venv/bin/python -c 'import mininet.node, netagg.softswitch.cli, netagg.host_agent._native'
ENV PATH=/netagg/.venv/bin:$PATH
# Needs `docker run --privileged` (network namespaces, veth pairs, raw sockets, tc, sysctl).
CMD ["bash", "docker/run-tests.sh", "--inside"]

# ---------------------------------------------------------------------------------------------------------------
FROM ${BMV2_IMAGE} AS bmv2
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_CONFIG_FILE
# What `make install` installs on Debian (the Makefile's DEB_PACKAGES), plus pip to fetch uv.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
        ca-certificates ethtool gcc iproute2 iputils-ping libc6-dev make mininet net-tools procps python3-pip tcpdump \
 && rm -rf /var/lib/apt/lists/*
# The project needs Python 3.11; the p4lang images carry their distribution's python3 (older). uv installs a
# standalone 3.11 (with its headers, for the C extensions) for the virtualenv.
RUN python3 -m pip install uv
WORKDIR /netagg
COPY requirements.txt ./
RUN uv venv --seed --python 3.11 .venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        .venv/bin/pip install -q --extra-index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' requirements.txt)"; \
    fi \
 && .venv/bin/pip install -q -r requirements.txt
COPY . .
# The rest of `make venv`; then make Mininet's Python package (installed for the system python3 by the Debian
# package, pure Python) importable from the venv.
RUN .venv/bin/pip install -q --no-deps --no-build-isolation -e . \
 && touch .venv/.installed .venv/.built \
 && ln -s "$(python3 -c 'import mininet, os; print(os.path.dirname(mininet.__file__))')" \
        "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mininet" \
 && .venv/bin/python -c 'import mininet.node, netagg.softswitch.cli, netagg.host_agent._native' \
 && command -v simple_switch_grpc
ENV PATH=/netagg/.venv/bin:$PATH
CMD ["bash", "docker/run-tests.sh", "--inside"]
