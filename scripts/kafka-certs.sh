#!/usr/bin/env bash
# Makes a throwaway certificate authority and the certificates a secured
# local Kafka needs, for development only, in DIR (default .kafka-certs):
#   ca.pem                      the CA: Ferry's kafka.tls.ca_file
#   server.pem, server-key.pem  the broker's certificate (localhost, 127.0.0.1,
#                               kafka-sasl): devbroker --tls-cert-file/--tls-key-file
#   client.pem, client-key.pem  a client certificate for mutual TLS
#   server.p12, creds           the same server certificate as a PKCS12 keystore
#                               and its password, for docker-compose's sasl-ssl profile
#   kafka_server_jaas.conf      the broker's SASL PLAIN user (ferry / $KAFKA_SASL_PASSWORD)
# Usage: scripts/kafka-certs.sh [DIR]; KAFKA_SASL_PASSWORD (default ferry-secret).
set -euo pipefail
DIR=${1:-.kafka-certs}
PASS=${KAFKA_SASL_PASSWORD:-ferry-secret}
STOREPASS=ferry-dev-keystore
mkdir -p "$DIR"
cd "$DIR"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 365 -subj "/CN=ferry dev CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
issue() { # name, subject, extensions
  openssl req "${ec[@]}" -subj "$2" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf '%b' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/CN=localhost" "subjectAltName=DNS:localhost,DNS:kafka-sasl,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
issue client "/CN=ferry" "extendedKeyUsage=clientAuth\n"
openssl pkcs12 -export -in server.pem -inkey server-key.pem -certfile ca.pem -name kafka -passout "pass:$STOREPASS" -out server.p12
printf '%s' "$STOREPASS" >creds
cat >kafka_server_jaas.conf <<JAAS
KafkaServer {
  org.apache.kafka.common.security.plain.PlainLoginModule required
  user_ferry="$PASS";
};
JAAS
# The broker container runs as a non-root user: it must read these.
chmod 600 ./*-key.pem
chmod 644 ca.pem server.pem client.pem server.p12 creds kafka_server_jaas.conf
echo "certificates in $DIR: CA $DIR/ca.pem; SASL PLAIN user ferry"
