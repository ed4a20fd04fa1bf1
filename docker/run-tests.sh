#!/usr/bin/env bash
# Build netagg's test images and run the conformance suite, the integration tests and the demo inside them.
#
#   docker/run-tests.sh [--no-build] [--bmv2|--no-bmv2] [--p4c] [-- PYTEST_ARGS...]   as root, from anywhere
#   docker/run-tests.sh --inside [-- PYTEST_ARGS...]                                  what the containers run
#
# --no-build   use the existing images instead of building them
# --bmv2       require the BMv2 image (fail when BMV2_IMAGE is neither present nor pullable); --no-bmv2: skip it.
#              By default it is built when BMV2_IMAGE is present or can be pulled, and skipped (said so) otherwise.
# --p4c        also build the p4c-check stage: compile the P4 program with p4lang/p4c, compare with the committed
#              artifacts
# PYTEST_ARGS  passed to both pytest runs (e.g. -x, -k demo)
#
# DOCKER             the engine (default: docker when its daemon answers, else podman; see docker/engine.sh)
# NETAGG_IMAGE       image name; the images are NETAGG_IMAGE:softswitch and NETAGG_IMAGE:bmv2 (default netagg-test)
# NETAGG_BASE_IMAGE  base of the softswitch image (default: netagg-debian:bookworm when `make docker-base` built
#                    it, else docker.io/library/debian:bookworm)
# BMV2_IMAGE         base of the BMv2 image (default docker.io/p4lang/behavioral-model:latest)
# TORCH_INDEX_URL    where the images get torch's CPU build (default https://download.pytorch.org/whl/cpu; empty
#                    when this machine's pip configuration names its own indexes or wheel folders: those are used)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
inside=0 build=1 p4c=0 bmv2=auto
while [ $# -gt 0 ]; do
    case $1 in
        --inside) inside=1 ;;
        --no-build) build=0 ;;
        --bmv2) bmv2=yes ;;
        --no-bmv2) bmv2=no ;;
        --p4c) p4c=1 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "run-tests.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# ------------------------------------------------------------------------------------------- inside a container
if [ "$inside" = 1 ]; then
    cd "$root"
    [ "$(id -u)" = 0 ] || { echo "run-tests.sh --inside: needs root (run the container with --privileged)" >&2; exit 2; }
    probe=netagg-probe-$$
    if ! ip netns add "$probe" 2>/dev/null; then
        echo "run-tests.sh --inside: cannot create a network namespace: run the container with --privileged" >&2
        exit 2
    fi
    ip netns del "$probe"
    targets=softswitch
    command -v simple_switch_grpc >/dev/null && targets=softswitch,bmv2
    echo "== targets: $targets ($(python --version), $(. /etc/os-release && echo "$PRETTY_NAME"))"
    results=() status=0
    step() {  # step NAME COMMAND...: run it, record its result and time
        local name=$1 start=$SECONDS rc=0
        shift
        echo "== $name"
        "$@" || rc=$?
        results+=("$(printf '%-34s %s (%d s)' "$name" "$([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)")" \
            $(( SECONDS - start )))")
        [ "$rc" = 0 ] || status=1
    }
    step "conformance suite [$targets]" env NETAGG_TARGET="$targets" python -m pytest -q -rs tests/conformance "$@"
    step "integration tests [$targets]" env NETAGG_TARGET="$targets" python -m pytest -q -rs tests/integration "$@"
    for target in ${targets//,/ }; do
        step "demo [$target]" make --no-print-directory mininet-demo ARGS="--target $target --hosts 3 --loss 0.01"
    done
    echo "== summary"
    printf '%s\n' "${results[@]}"
    exit "$status"
fi

# ------------------------------------------------------------------------------------------- on the host
# shellcheck source=docker/engine.sh
. "$here/engine.sh"
[ "$(id -u)" = 0 ] || { echo "run-tests.sh: needs root (the test containers are privileged)" >&2; exit 2; }
pick_engine
image=${NETAGG_IMAGE:-netagg-test}
bmv2_base=${BMV2_IMAGE:-docker.io/p4lang/behavioral-model:latest}

available() {  # present here, or pulled now
    image_exists "$1" || "${engine[@]}" pull -q "$1" >/dev/null 2>&1
}

if [ -n "${NETAGG_BASE_IMAGE:-}" ]; then
    base=$NETAGG_BASE_IMAGE
elif image_exists netagg-debian:bookworm; then
    base=netagg-debian:bookworm
else
    base=docker.io/library/debian:bookworm
fi
if [ "$build" = 0 ]; then
    [ "$bmv2" = auto ] && { image_exists "$image:bmv2" && bmv2=yes || bmv2=no; }
elif [ "$bmv2" != no ] && ! available "$bmv2_base"; then
    [ "$bmv2" = yes ] && { echo "run-tests.sh: --bmv2: cannot pull $bmv2_base" >&2; exit 2; }
    bmv2=no
    echo "bmv2 image: skipped ($bmv2_base is not here and cannot be pulled); the softswitch image runs alone"
fi

build_args=(--network host "${limits[@]}" --build-arg "DEBIAN_IMAGE=$base" --build-arg "BMV2_IMAGE=$bmv2_base")
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && build_args+=(--build-arg "$v=${!v}")
done
if [ "$build" = 1 ] && [ "${engine[0]}" = podman ]; then
    # The machine's pip configuration (indexes, wheel folders, CA bundle, constraints) is mounted into the build,
    # so that pip inside finds what `make install` finds here; none of it is stored in the image.
    hostcfg=$(mktemp -d "${TMPDIR:-/tmp}/netagg-hostcfg.XXXXXX")
    trap 'rm -rf "$hostcfg"' EXIT
    mapfile -t folders < <(python3 "$here/host_pip_config.py" "$hostcfg" /run/netagg-host)
    build_args+=(--ignorefile "$here/netagg.Dockerfile.dockerignore")
    if [ -s "$hostcfg/pip.conf" ]; then
        build_args+=(--volume "$hostcfg:/run/netagg-host:ro" --build-arg PIP_CONFIG_FILE=/run/netagg-host/pip.conf)
        for f in "${folders[@]}"; do build_args+=(--volume "${f%%$'\t'*}:${f#*$'\t'}:ro"); done
        echo "pip configuration: this machine's, mounted into the build (${#folders[@]} local folders)"
        if [ "${#folders[@]}" -gt 0 ] && [ -z "${TORCH_INDEX_URL+set}" ]; then
            TORCH_INDEX_URL=
        fi
    fi
fi
[ -n "${TORCH_INDEX_URL+set}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

build_stage() {  # build_stage STAGE TAG
    local start=$SECONDS
    echo "== building $2 (stage $1 of docker/netagg.Dockerfile)"
    nice "${engine[@]}" build "${build_args[@]}" -f "$here/netagg.Dockerfile" --target "$1" -t "$2" "$root"
    echo "built $2 in $(( SECONDS - start )) s: $(( $("${engine[@]}" image inspect --format '{{.Size}}' "$2") / 1000000 )) MB"
}

if [ "$p4c" = 1 ]; then
    build_stage p4c-check "$image:p4c-check"
fi
images=("$image:softswitch")
[ "$bmv2" = no ] || images+=("$image:bmv2")
if [ "$build" = 1 ]; then
    echo "softswitch image base: $base"
    build_stage softswitch "$image:softswitch"
    [ "$bmv2" = no ] || build_stage bmv2 "$image:bmv2"
fi

# --privileged: the tests create network namespaces (CAP_SYS_ADMIN, a writable /run/netns), veth pairs and tc
# qdiscs (CAP_NET_ADMIN), AF_PACKET sockets (CAP_NET_RAW), and set sysctls in /proc/sys (read-only otherwise).
# --network none: they need no outside network; everything they send stays on loopback or in namespaces inside.
status=0
for img in "${images[@]}"; do
    echo "== running $img"
    start=$SECONDS rc=0
    "${engine[@]}" run --rm --privileged --network none "${limits[@]}" "$img" \
        bash docker/run-tests.sh --inside -- "$@" || rc=$?
    echo "$img: $([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)") ($(( SECONDS - start )) s)"
    [ "$rc" = 0 ] || status=1
done
exit "$status"
