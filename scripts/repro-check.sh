#!/usr/bin/env bash
# Reproducible images: build image NAME (default tdx, the cheapest with a
# standalone workspace) here and from a copy of this tree in another directory,
# and compare the digests. Usage: scripts/repro-check.sh [name]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-tdx}
section=images.$name
case $name in attestd|webhook) section=components.$name ;; esac
digest_in() {
    awk -v s="[$section]" '$0 == s {f=1; next} /^\[/ {f=0} f && /^digest/ {gsub(/"/, "", $3); print $3}' "$1"
}
bash containers/build.sh "$name"
here=$(digest_in containers/images.lock)
copy=$(mktemp -d /tmp/attestd-repro.XXXXXX)
trap 'rm -rf "$copy"' EXIT
# The working tree as it is (tracked and new files), not the last commit.
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$copy"
cp containers/images.lock "$copy/containers/images.lock"
(cd "$copy" && bash containers/build.sh "$name")
there=$(digest_in "$copy/containers/images.lock")
echo "$name: $here here, $there from $copy"
if [ -z "$here" ] || [ "$here" != "$there" ]; then
    echo "error: $name is not reproducible: $here built here, $there from another directory" >&2
    exit 1
fi
