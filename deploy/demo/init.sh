#!/bin/sh
# Demo profile only (docker-compose.yml, service demo-init): makes a
# throwaway CA and certificates for PostgreSQL and the proxy, and the local
# keyring, into the demo's volumes. Runs as root in the image's build stage
# (openssl and pgcrypt-proxy are there). Idempotent: what exists is kept.
set -eu

CERTS=${CERTS:-/certs}                        # volume demo-certs
STATE=${STATE:-/state}                        # volume pgcrypt-state
MASTER_KEY_FILE=${MASTER_KEY_FILE:-/run/secrets/master_key}
PG_UID=${PG_UID:-999}                         # postgres in the postgres:15 image
PROXY_UID=${PROXY_UID:-65532}                 # nonroot in the proxy image

if [ ! -s "$CERTS/upstream-ca.pem" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	umask 077
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 90 \
		-subj "/CN=pgcrypt-proxy demo CA" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	leaf() { # name SANs
		openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-subj "/CN=$1" -keyout "$tmp/$1.key" -out "$tmp/$1.csr" 2>/dev/null
		printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$2" >"$tmp/$1.ext"
		openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
			-days 90 -extfile "$tmp/$1.ext" -out "$tmp/$1.crt" 2>/dev/null
	}
	leaf postgres "DNS:postgres,DNS:localhost,IP:127.0.0.1"
	leaf proxy "DNS:localhost,DNS:proxy,IP:127.0.0.1"
	install -m 0600 -o "$PG_UID" -g "$PG_UID" "$tmp/postgres.key" "$CERTS/server.key"
	install -m 0644 "$tmp/postgres.crt" "$CERTS/server.crt"
	install -m 0400 -o "$PROXY_UID" -g "$PROXY_UID" "$tmp/proxy.key" "$CERTS/proxy.key"
	install -m 0644 "$tmp/proxy.crt" "$CERTS/proxy.crt"
	# Last: its presence says the set is complete. Clients use it as
	# sslrootcert too. The CA key is not kept.
	install -m 0644 "$tmp/ca.pem" "$CERTS/upstream-ca.pem"
	echo "demo-init: certificates written to $CERTS"
fi

if [ ! -s "$STATE/keyring.json" ]; then
	pgcrypt-proxy kms local init --keyring "$STATE/keyring.json" --master-key-file "$MASTER_KEY_FILE"
	echo "demo-init: keyring created in $STATE"
fi
chown -R "$PROXY_UID:$PROXY_UID" "$STATE"
