#!/usr/bin/env bash
# A Docker engine for `make integration`: `engine.sh start` uses one that already answers
# `docker info`; otherwise (root, no systemd needed) installs Debian's docker.io when
# dockerd is missing and starts dockerd in the background, its log in var/dockerd.log.
# `engine.sh stop` stops only a dockerd that `start` started (its pid in var/dockerd.pid)
# and undoes what it changed on the host: the docker0 bridge, its iptables rules and
# FORWARD policy, and net.ipv4.ip_forward.
set -euo pipefail
cd "$(dirname "$0")/../.."
VAR=$PWD/var
PIDFILE=$VAR/dockerd.pid

start() {
  if docker info >/dev/null 2>&1; then
    echo "engine.sh: a Docker engine already answers; using it"
    return 0
  fi
  if ! command -v dockerd >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "engine.sh: no dockerd, and installing it needs root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  [ "$(id -u)" = 0 ] || { echo "engine.sh: starting dockerd needs root" >&2; exit 1; }
  mkdir -p "$VAR"
  cat /proc/sys/net/ipv4/ip_forward >"$VAR/dockerd.ip_forward"
  if command -v iptables >/dev/null; then
    iptables -S FORWARD | sed -n 's/^-P FORWARD //p' >"$VAR/dockerd.forward-policy"
  fi
  # overlay2 (vfs builds are 5-8 times slower); dockerd starts without systemd.
  setsid dockerd --storage-driver "${DOCKER_STORAGE_DRIVER:-overlay2}" \
    --pidfile "$VAR/dockerd.daemon.pid" >"$VAR/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
      echo "engine.sh: dockerd answers (pid $(cat "$PIDFILE"), log var/dockerd.log)"
      return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "engine.sh: dockerd did not answer; var/dockerd.log:" >&2
  tail -n 30 "$VAR/dockerd.log" >&2
  stop
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$PIDFILE"
  ip link delete docker0 2>/dev/null || true
  # dockerd leaves its chains and rules behind (DOCKER*, docker0, the br-<id> bridges of
  # Compose's networks) and the FORWARD policy at DROP: remove exactly those.
  if command -v iptables-save >/dev/null; then
    iptables-save | grep -Ev -e 'DOCKER' -e 'docker0' -e 'br-[0-9a-f]{12}' | iptables-restore || true
  fi
  if [ -s "$VAR/dockerd.forward-policy" ]; then
    iptables -P FORWARD "$(cat "$VAR/dockerd.forward-policy")" || true
  fi
  rm -f "$VAR/dockerd.forward-policy"
  if [ -f "$VAR/dockerd.ip_forward" ]; then
    cat "$VAR/dockerd.ip_forward" >/proc/sys/net/ipv4/ip_forward || true
    rm -f "$VAR/dockerd.ip_forward"
  fi
  echo "engine.sh: dockerd stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
