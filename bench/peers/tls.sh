# Sourced by peers.sh and profile.sh.
# proglog_tls_setup DIR: makes, with openssl, a CA, one certificate for every proglog node
# (serverAuth + clientAuth, IP 127.0.0.1: the server and the peer certificate), a client
# certificate with CN=root, and an ACL (model.conf, policy.csv) letting root produce and consume.
proglog_tls_setup() { # dir ; CA, server cert (serverAuth+clientAuth, also the peer cert), client CN=root, ACL
  local t=$1
  mkdir -p "$t"
  (
    cd "$t" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=peerbench-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca-key.pem -out ca.pem || exit 1
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server-key.pem -out server.csr || exit 1
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem || exit 1
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" > client.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=root" -keyout root-client-key.pem -out root-client.csr || exit 1
    openssl x509 -req -in root-client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile client.ext -out root-client.pem || exit 1
    printf '%s\n' "[request_definition]" "r = sub, obj, act" "" "[policy_definition]" "p = sub, obj, act" "" \
      "[policy_effect]" "e = some(where (p.eft == allow))" "" \
      "[matchers]" "m = r.sub == p.sub && r.obj == p.obj && r.act == p.act" > model.conf
    printf '%s\n' "p, root, *, produce" "p, root, *, consume" > policy.csv
  ) > "$t/openssl.log" 2>&1 || { cat "$t/openssl.log" >&2; return 1; }
}
