#!/usr/bin/env bash
# Build a local Debian 12 (bookworm) base image with debootstrap, for machines that cannot pull from a registry.
#
#   docker/build-base.sh [IMAGE]     as root; IMAGE defaults to netagg-debian:bookworm
#
# DEBIAN_MIRROR   the Debian mirror debootstrap and the image's apt use (default http://deb.debian.org/debian)
# DOCKER          the container engine (see docker/engine.sh)
#
# docker/run-tests.sh uses this image for the softswitch stage when it exists (and debian:bookworm otherwise).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/engine.sh
. "$here/engine.sh"
case ${1:-} in
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "build-base.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
image=${1:-netagg-debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

[ "$(id -u)" = 0 ] || { echo "build-base.sh: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
pick_engine

dir=$(mktemp -d "${TMPDIR:-/tmp}/netagg-base.XXXXXX")
trap 'rm -rf --one-file-system "$dir"' EXIT
start=$SECONDS
echo "debootstrap: minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -n 20 "$dir.log" >&2; rm -f "$dir.log"; echo "build-base.sh: debootstrap failed" >&2; exit 1; }
rm -f "$dir.log"
# The suites a Debian image has (updates and security fixes too), and no package caches.
cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
tar -C "$dir" --numeric-owner -c . | "${engine[@]}" import --change 'CMD ["bash"]' - "$image" >/dev/null
echo "base image: $image ($(( SECONDS - start )) s)"
"${engine[@]}" image ls "$image"
