# syntax=docker/dockerfile:1
#
# Images for testing netagg against BMv2 (see docker/README.md and docs/demo.md, "Docker").
#
#   test       p4lang/behavioral-model (simple_switch_grpc) + Mininet + this project in a Python 3.11 venv:
#              runs the conformance suite and the integration tests inside a privileged container.
#   p4c-check  p4lang/p4c: compiles p4/v1model/main.p4 and compares the result with the committed artifacts.
#
# Build from the repository root (the build context must be the repository):
#   docker build -f docker/netagg.Dockerfile --target test -t netagg-test .
#   docker build -f docker/netagg.Dockerfile --target p4c-check .

ARG BMV2_IMAGE=p4lang/behavioral-model:latest
ARG P4C_IMAGE=p4lang/p4c:latest

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
FROM ${BMV2_IMAGE} AS test
ENV DEBIAN_FRONTEND=noninteractive
# What `make install` installs on Debian (network tools, Mininet), plus pip to fetch uv.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
        ca-certificates ethtool iproute2 iputils-ping make mininet net-tools procps python3-pip tcpdump \
 && rm -rf /var/lib/apt/lists/*
# The project needs Python 3.11; the p4lang images carry their distribution's python3 (older). uv installs a
# standalone 3.11 for the virtualenv.
RUN python3 -m pip install --no-cache-dir uv
WORKDIR /netagg
# Dependencies first, so that editing the source does not reinstall them.
COPY requirements.txt pyproject.toml Makefile ./
RUN uv venv --seed --python 3.11 .venv \
 && .venv/bin/pip install --no-cache-dir -q -r requirements.txt
COPY . .
# The rest of `make venv`; then make Mininet's Python package (installed for the system python3 by the Debian
# package, pure Python) importable from the venv.
RUN .venv/bin/pip install --no-cache-dir -q --no-deps --no-build-isolation -e . \
 && touch .venv/.installed \
 && ln -s "$(python3 -c 'import mininet, os; print(os.path.dirname(mininet.__file__))')" \
        "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mininet" \
 && .venv/bin/python -c 'import mininet.node, netagg.softswitch.cli' \
 && command -v simple_switch_grpc
ENV PATH=/netagg/.venv/bin:$PATH
# Needs `docker run --privileged` (network namespaces, veth pairs, raw sockets, tc).
CMD ["bash", "docker/run-tests.sh", "--inside"]
