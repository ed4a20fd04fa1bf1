# Sourced by the docker/ scripts: picks the container engine and the options every build and run gets.
#
# DOCKER    the engine command, words allowed (DOCKER=podman, DOCKER="podman --runtime runc"); by default `docker`
#           when a Docker daemon answers, else `podman` when it is installed.
# Sets: engine (an array: the command and its global options) and limits (ulimit options).

pick_engine() {
    if [ -n "${DOCKER:-}" ]; then
        read -r -a engine <<<"$DOCKER"
        echo "engine: ${engine[*]} (DOCKER)"
    elif command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
        engine=(docker)
        echo "engine: docker (the Docker daemon answers)"
    elif command -v podman >/dev/null; then
        engine=(podman)
        echo "engine: podman (no Docker daemon answers)"
    else
        echo "$(basename "$0"): no container engine: install Docker, or Debian's podman (apt-get install podman runc)" >&2
        exit 2
    fi
    command -v "${engine[0]}" >/dev/null || { echo "$(basename "$0"): ${engine[0]} is not installed" >&2; exit 2; }
    # The engines' default limits (podman: 1048576 open files, and the process limit) are refused by the runtime
    # where the caller's own limits are lower. Containers get this shell's open-file limits and a fixed process
    # limit, ample for the tests (the host's own process limit can be refused too).
    limits=(--ulimit "nofile=$(limit -Sn):$(limit -Hn)" --ulimit "nproc=4096:4096")
}

limit() {  # one of this shell's limits as --ulimit takes it (-1: unlimited)
    local v
    v=$(ulimit "$1")
    [ "$v" = unlimited ] && v=-1
    echo "$v"
}

image_exists() {
    "${engine[@]}" image inspect "$1" >/dev/null 2>&1
}
