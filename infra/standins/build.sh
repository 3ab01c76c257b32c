#!/usr/bin/env bash
# The images the Compose file names, for `make integration`: each one already present is
# used as it is; a missing one is pulled; only when the registry cannot be reached is a
# stand-in built here (infra/standins/README.md), tagged with the very name the
# Dockerfiles and docker-compose.yml use, so that the project's own files are what the
# tests run. Built with no pull, from a Debian base made by debootstrap (its tarball is
# cached under ~/.cache/digit-recognizer/standins/). Each image carries the hash of its
# recipe as a label and is rebuilt only when the recipe changed.
#
# Also builds the development model server's image that the tests' Compose override
# (tests/integration/dev-model-server.yml) runs in place of tensorflow/serving.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/infra/standins
CACHE=${DIGIT_RECOGNIZER_CACHE:-$HOME/.cache/digit-recognizer}/standins
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BASE=digit-recognizer-standin/bookworm:minbase
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=digit-recognizer.recipe
registry=unknown

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The image names, read from the files that use them (one place to change a pin).
from_of() { sed -n 's/^FROM \([^ ]*\).*/\1/p' "$1" | head -n 1; }
compose_image() { sed -n "s|^ *image: \($1:[^ ]*\)$|\1|p" docker-compose.yml | head -n 1; }
PYTHON_IMAGE=$(from_of Dockerfile.function)
NGINX_IMAGE=$(compose_image nginx)
CASSANDRA_IMAGE=$(compose_image cassandra)
TF_SERVING_IMAGE=$(compose_image tensorflow/serving)
MODEL_SERVER_IMAGE=digit-recognizer-dev-model-server:test

present() { docker image inspect "$1" >/dev/null 2>&1; }
recipe_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
hash_dir() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }

# Pull IMAGE; remember a registry that cannot be reached, so the next image is not tried.
pulled() {
  [ "$registry" = unreachable ] && return 1
  if timeout 300 docker pull --quiet "$1" >/dev/null 2>"$work/pull.err"; then
    registry=reachable
    return 0
  fi
  echo "build.sh: could not pull $1: $(tail -n 1 "$work/pull.err")"
  [ "$registry" = reachable ] || registry=unreachable
  return 1
}

base_image() {
  present "$BASE" && return 0
  local tarball=$CACHE/bookworm-minbase.tar.gz
  if [ ! -s "$tarball" ]; then
    if ! command -v debootstrap >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    echo "build.sh: debootstrap --variant=minbase bookworm (once; cached in $CACHE)"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" \
      || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/rootfs" -czf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$work/rootfs"
  fi
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE" >/dev/null
}

# build_image NAME CONTEXT [docker build args...]: unless NAME carries CONTEXT's hash.
build_image() {
  local name=$1 context=$2 recipe
  shift 2
  recipe=$(hash_dir "$context")
  if [ "$(recipe_of "$name")" = "$recipe" ]; then
    echo "build.sh: $name is up to date"
    return 0
  fi
  echo "build.sh: building $name"
  local start=$SECONDS
  local log=$ROOT/var/standins/${name//[\/:]/_}.log
  mkdir -p "$(dirname "$log")"
  if ! docker build --pull=false --label "$LABEL=$recipe" -t "$name" "$@" "$context" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "build.sh: building $name failed; its log: $log" >&2
    exit 1
  fi
  echo "build.sh: built $name in $((SECONDS - start)) s"
}

# The stand-in's context: its directory plus this machine's egress CA certificates.
standin_context() {
  local dir=$work/$1
  cp -r "$HERE/$1" "$dir"
  mkdir -p "$dir/ca-certificates"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$dir/ca-certificates/" \;
  echo "$dir"
}

# Whether IMAGE is to be used as it is: a real one present, or pulled now. A stand-in's
# tag left behind by an interrupted run is not real (it carries the recipe label).
real_image() {
  if present "$1"; then
    [ -z "$(recipe_of "$1")" ]
    return
  fi
  pulled "$1"
}

# A stand-in is kept as digit-recognizer-standin/IMAGE and tagged IMAGE only while the
# tests run (`build.sh untag` takes that tag away again), so that no later build of a
# shipped image on this machine can start from a stand-in.
standin() {  # standin IMAGE CONTEXT [build args...]
  local image=$1 context=$2
  shift 2
  build_image "digit-recognizer-standin/$image" "$context" "$@"
  docker tag "digit-recognizer-standin/$image" "$image"
}

untag() {
  local image
  for image in "$PYTHON_IMAGE" "$NGINX_IMAGE" "$CASSANDRA_IMAGE"; do
    if present "$image" && [ -n "$(recipe_of "$image")" ]; then
      docker rmi "$image" >/dev/null
      echo "build.sh: untagged the stand-in $image"
    fi
  done
}

cassandra_context() {
  local dir
  dir=$(standin_context cassandra)
  local lib
  lib=$("$PYTHON" -c 'import os; from infra.cassandra.local import cassandra_lib; print(cassandra_lib(os.environ))')
  cp -r "$lib" "$dir/lib"
  cp infra/cassandra/templates/logback.xml "$dir/conf/logback.xml"
  # The project's launcher's JVM options, one a line (bin/cassandra reads them).
  "$PYTHON" -c 'from infra.cassandra.local import JVM_OPTIONS, FAST_START
print("\n".join(JVM_OPTIONS + FAST_START))' >"$dir/conf/jvm.options"
  echo "$dir"
}

if [ "${1:-}" = untag ]; then
  untag
  exit 0
fi
start=$SECONDS
if ! real_image "$PYTHON_IMAGE"; then
  base_image
  standin "$PYTHON_IMAGE" "$(standin_context python)"
fi
if ! real_image "$NGINX_IMAGE"; then
  base_image
  standin "$NGINX_IMAGE" "$(standin_context nginx)"
fi
if ! real_image "$CASSANDRA_IMAGE"; then
  base_image
  cqlsh=$(sed -n 's/^cqlsh==\([^ ]*\).*/\1/p' requirements-demo.txt)
  standin "$CASSANDRA_IMAGE" "$(cassandra_context)" --build-arg "CQLSH_VERSION=$cqlsh"
fi
# TensorFlow Serving has no stand-in (nothing here can build its binary): where it cannot
# be pulled, the tests run the development model server instead.
if ! real_image "$TF_SERVING_IMAGE"; then
  mkdir -p "$work/model-server/function"
  cp tests/integration/model-server.Dockerfile "$work/model-server/Dockerfile"
  cp requirements-demo.txt "$work/model-server/"
  cp function/requirements.txt "$work/model-server/function/"
  # Its base, by id: a rebuilt base rebuilds it.
  docker image inspect --format '{{ .Id }}' "$PYTHON_IMAGE" >"$work/model-server/base-id"
  build_image "$MODEL_SERVER_IMAGE" "$work/model-server"
fi
# Stand-ins a changed recipe replaced (the old image, now without a tag).
docker image prune --force --filter "label=$LABEL" >/dev/null
echo "build.sh: images ready in $((SECONDS - start)) s (registry: $registry)"
