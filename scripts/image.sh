#!/usr/bin/env bash
# make image: build deploy/Dockerfile with the first container builder that works here (docker or podman with a
# running engine, or buildah), tagged $IMAGE (default pyztunnel:<version>). Where none runs, or the base image
# cannot be had, it says so in one line and exits 0: an image is an optional artefact, never a test prerequisite.
# --probe: only say which builder would be used (or why none), exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/pyztunnel/__init__.py)
image=${IMAGE:-pyztunnel:$version}
base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' deploy/Dockerfile | tail -1)

builder=""
why=""
for tool in docker podman buildah; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    continue
  fi
  # A client alone is not a builder: docker needs its daemon, podman and buildah their storage.
  if out=$(timeout 20 "$tool" info 2>&1 >/dev/null); then
    builder=$tool
    break
  fi
  why="${why:+$why; }$tool: $(printf '%s' "$out" | grep -v '^\s*$' | tail -1)"
done

if [ -z "$builder" ]; then
  echo "make image: no container builder runs here (${why:-none of docker, podman, buildah is installed}); nothing built"
  exit 0
fi
if [ "${1:-}" = --probe ]; then
  echo "make image: would build $image with $builder from $base"
  exit 0
fi
if [ "$builder" != buildah ] && ! "$builder" image inspect "$base" >/dev/null 2>&1 \
    && ! "$builder" pull -q "$base" >/dev/null 2>&1; then
  echo "make image: the base image $base is not available to $builder here (not present, pull failed); nothing built"
  exit 0
fi
if [ "$builder" = buildah ]; then
  buildah bud -f deploy/Dockerfile -t "$image" .
else
  "$builder" build -f deploy/Dockerfile -t "$image" .
fi
echo "make image: built $image with $builder"
