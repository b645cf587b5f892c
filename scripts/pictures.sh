#!/usr/bin/env bash
# Render docs/pictures/*.dot to SVG with Graphviz (Debian's `graphviz`), each
# SVG carrying its source's SHA-256: the test suite (tests/tests/docs.rs) renders
# every source again and fails on a picture whose source has changed since.
#
#   scripts/pictures.sh          # after editing a .dot file
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dot >/dev/null || { echo "pictures.sh: dot is missing (apt-get install graphviz)" >&2; exit 1; }
for src in docs/pictures/*.dot; do
    svg=${src%.dot}.svg
    sum=$(sha256sum "$src" | cut -d' ' -f1)
    dot -Tsvg "$src" |
        sed "1a <!-- rendered from $src (sha256:$sum) by scripts/pictures.sh: edit the source, not this file -->" \
            >"$svg.tmp"
    mv "$svg.tmp" "$svg"
    echo "$svg"
done
