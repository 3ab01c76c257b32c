#!/bin/bash
# The stand-in's entrypoint: the official image's environment variables, applied the way
# its docker-entrypoint.sh applies them (written here from its documented behaviour),
# then Cassandra as the cassandra user.
set -euo pipefail

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- cassandra -f "$@"
fi

if [ "$1" = cassandra ] && [ "$(id -u)" = 0 ]; then
  find /var/lib/cassandra /var/log/cassandra "$CASSANDRA_CONF" \! -user cassandra \
    -exec chown cassandra '{}' +
  exec setpriv --reuid=cassandra --regid=cassandra --init-groups "$0" "$@"
fi

first_address() {  # the container's first non-loopback IPv4 address
  ip -4 -o address show scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }'
}

# A key: value line of cassandra.yaml, commented out or not, set to a value.
set_yaml() {
  local file=$CASSANDRA_CONF/cassandra.yaml
  sed -E "s|^(# )?($1:).*|\2 $2|" "$file" >"$file.new"
  cat "$file.new" >"$file" && rm "$file.new"
}

if [ "$1" = cassandra ]; then
  : "${CASSANDRA_RPC_ADDRESS:=0.0.0.0}"
  : "${CASSANDRA_LISTEN_ADDRESS:=auto}"
  [ "$CASSANDRA_LISTEN_ADDRESS" = auto ] && CASSANDRA_LISTEN_ADDRESS=$(first_address)
  : "${CASSANDRA_BROADCAST_ADDRESS:=$CASSANDRA_LISTEN_ADDRESS}"
  [ "$CASSANDRA_BROADCAST_ADDRESS" = auto ] && CASSANDRA_BROADCAST_ADDRESS=$(first_address)
  : "${CASSANDRA_BROADCAST_RPC_ADDRESS:=$CASSANDRA_BROADCAST_ADDRESS}"
  : "${CASSANDRA_SEEDS:=$CASSANDRA_BROADCAST_ADDRESS}"

  file=$CASSANDRA_CONF/cassandra.yaml
  sed -E "s|(- seeds:).*|\1 \"$CASSANDRA_SEEDS\"|" "$file" >"$file.new"
  cat "$file.new" >"$file" && rm "$file.new"
  for key in broadcast_address broadcast_rpc_address cluster_name endpoint_snitch \
    listen_address num_tokens rpc_address; do
    var=CASSANDRA_${key^^}
    if [ -n "${!var:-}" ]; then set_yaml "$key" "${!var}"; fi
  done
  for key in dc rack; do
    var=CASSANDRA_${key^^}
    if [ -n "${!var:-}" ]; then
      file=$CASSANDRA_CONF/cassandra-rackdc.properties
      sed -E "s|^($key=).*|\1${!var}|" "$file" >"$file.new"
      cat "$file.new" >"$file" && rm "$file.new"
    fi
  done
fi

exec "$@"
