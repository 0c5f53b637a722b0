#!/usr/bin/env bash
# Makes a self-signed ECDSA (P-256) certificate for localhost, valid for the
# names localhost and 127.0.0.1, usable by browsers (after trusting it) and by
# the tests. Writes cert.pem and key.pem into DIR (default: this folder).
# Both files are git-ignored: never commit a key.
set -euo pipefail
dir="${1:-$(dirname "$0")}"
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -days 825 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 600 "$dir/key.pem"
echo "wrote $dir/cert.pem and $dir/key.pem"
