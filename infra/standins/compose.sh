#!/usr/bin/env bash
# Docker Compose v2 as a CLI plugin, built from the Go module proxy when `docker compose`
# is missing. `go install ...@version` refuses the module (its go.mod has `exclude`
# directives), so: download the module, build ./cmd in a writable copy, keep the binary
# under the cache directory (a second run on the same machine only copies it).
set -euo pipefail
COMPOSE_VERSION=${COMPOSE_VERSION:-v2.40.3}
CACHE=${DIGIT_RECOGNIZER_CACHE:-$HOME/.cache/digit-recognizer}/compose/$COMPOSE_VERSION
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

if docker compose version >/dev/null 2>&1; then
  exit 0
fi
if [ ! -x "$CACHE/docker-compose" ]; then
  command -v go >/dev/null || { echo "compose.sh: no docker compose and no Go to build it" >&2; exit 1; }
  echo "compose.sh: building Docker Compose $COMPOSE_VERSION from the Go module proxy"
  work=$(mktemp -d)
  trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
  dir=$(cd "$work" && go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  (cd "$work/src" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    -o docker-compose ./cmd)
  mkdir -p "$CACHE"
  mv "$work/src/docker-compose" "$CACHE/docker-compose.tmp"
  mv "$CACHE/docker-compose.tmp" "$CACHE/docker-compose"
fi
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$CACHE/docker-compose" "$PLUGIN_DIR/docker-compose"
docker compose version
