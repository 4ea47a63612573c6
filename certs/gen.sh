#!/usr/bin/env bash
# Makes the same set as `proglog certs` with cfssl (Debian: golang-cfssl):
# ca.pem, server.pem (server + client auth), root-client.pem, nobody-client.pem
# and their -key.pem files, in the directory given (default: this one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out" && cd "$out"
cfssl gencert -initca "$here/ca-csr.json" | cfssljson -bare ca
cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config="$here/ca-config.json" \
  -profile=server "$here/server-csr.json" | cfssljson -bare server
for user in root nobody; do
  cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config="$here/ca-config.json" \
    -profile=client -cn="$user" "$here/client-csr.json" | cfssljson -bare "$user-client"
done
rm -f ./*.csr
