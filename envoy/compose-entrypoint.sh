#!/bin/sh
# Entrypoint of the compose Envoy image: writes /tmp/envoy.yaml, the baked config
# (/etc/envoy/envoy.yaml) with the region's edge credential in place of
# @EDGE_CREDENTIAL@, then runs the command (Envoy with -c /tmp/envoy.yaml). The
# credential comes from EDGE_CREDENTIAL_FILE (/edge/credential: the region's control
# plane writes it there at its first start), so the image holds no secret.
set -eu
file="${EDGE_CREDENTIAL_FILE:-/edge/credential}"
i=0
while [ ! -s "$file" ]; do
  i=$((i + 1))
  if [ "$i" -gt 60 ]; then
    echo "no edge credential in $file after 60 s (the region's control plane writes it)" >&2
    exit 1
  fi
  sleep 1
done
credential=$(tr -d ' \n' <"$file")
case "$credential" in
  *[!A-Za-z0-9_-]*) echo "$file does not hold an edge credential" >&2; exit 1 ;;
esac
umask 077
sed "s/@EDGE_CREDENTIAL@/$credential/g" /etc/envoy/envoy.yaml >/tmp/envoy.yaml
# The official image's entrypoint runs Envoy as its own user: hand it the file.
if [ -x /docker-entrypoint.sh ]; then
  chown envoy /tmp/envoy.yaml 2>/dev/null || chmod 0644 /tmp/envoy.yaml
  exec /docker-entrypoint.sh "$@"
fi
exec "$@"
