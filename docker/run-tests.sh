#!/usr/bin/env bash
# Run netagg's conformance suite and integration tests against BMv2 in a privileged container.
#
#   docker/run-tests.sh [--no-build] [--p4c] [-- PYTEST_ARGS...]   on a machine with Docker (from anywhere)
#   docker/run-tests.sh --inside [-- PYTEST_ARGS...]               what the container runs
#
# --no-build   use the existing image (NETAGG_IMAGE, default netagg-test) instead of building it
# --p4c        also build the p4c-check stage: compile the P4 program with p4lang/p4c and compare it with the
#              committed artifacts
# PYTEST_ARGS  passed to both pytest runs (e.g. -x, -k demo)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
image=${NETAGG_IMAGE:-netagg-test}
inside=0 build=1 p4c=0
while [ $# -gt 0 ]; do
    case $1 in
        --inside) inside=1 ;;
        --no-build) build=0 ;;
        --p4c) p4c=1 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "run-tests.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$inside" = 1 ]; then
    cd "$root"
    if [ "$(id -u)" != 0 ]; then
        echo "run-tests.sh --inside: needs root (run the container with --privileged)" >&2
        exit 2
    fi
    command -v simple_switch_grpc >/dev/null || { echo "simple_switch_grpc is not on PATH" >&2; exit 2; }
    status=0
    echo "== conformance suite on BMv2"
    NETAGG_TARGET=bmv2 python -m pytest -q -rs tests/conformance "$@" || status=$?
    echo "== integration tests on BMv2"
    NETAGG_TARGET=bmv2 python -m pytest -q -rs tests/integration "$@" || status=$?
    exit "$status"
fi

command -v docker >/dev/null || { echo "run-tests.sh: docker is not installed" >&2; exit 2; }
if [ "$p4c" = 1 ]; then
    docker build -f "$here/netagg.Dockerfile" --target p4c-check "$root"
fi
if [ "$build" = 1 ]; then
    docker build -f "$here/netagg.Dockerfile" --target test -t "$image" "$root"
fi
# --privileged: namespaces, veth pairs, AF_PACKET sockets and tc. --network none: the tests need no outside
# network; everything they send stays on loopback or in namespaces inside the container.
exec docker run --rm --privileged --network none "$image" bash docker/run-tests.sh --inside -- "$@"
