#!/bin/sh
# One client certificate per node for the Spyglass agents, and the
# collector's server certificate, from one CA. Needs only openssl.
#
#   deploy/scripts/node-certs.sh OUT_DIR NODE_NAME...
#
# NODE_NAME is the Kubernetes node name (`kubectl get nodes -o name`,
# spec.nodeName): the agent reports it as its node id (--node-name
# $(NODE_NAME)), and the collector accepts a node id only from the
# certificate whose DNS subject alternative name is that name. Each node
# certificate has exactly that one DNS SAN, CN the same, client auth only.
#
# Writes, keeping what OUT_DIR already holds (run it again with new nodes;
# the CA and existing certificates are reused, never replaced):
#   OUT_DIR/ca.crt, ca.key                the CA (keep ca.key off the cluster)
#   OUT_DIR/collector.crt, collector.key  server certificate for
#                                         spyglass-collector.spyglass.svc
#   OUT_DIR/nodes/NODE/tls.crt, tls.key, ca.crt
#                                         one directory per node, to install
#                                         on that node only (the hostPath way)
#   OUT_DIR/spyglass-agent-node-tls.yaml  Secret spyglass-agent-node-tls:
#                                         ca.crt, NODE.crt, NODE.key for every
#                                         node under OUT_DIR/nodes
#   OUT_DIR/spyglass-collector-tls.yaml   Secret spyglass-collector-tls
# docs/deploy.md#one-client-certificate-per-node says which to use.
set -eu

DAYS=${DAYS:-825}
NAMESPACE=${NAMESPACE:-spyglass}

die() { echo "node-certs.sh: $*" >&2; exit 1; }

[ "$#" -ge 2 ] || die "usage: $0 OUT_DIR NODE_NAME... (the Kubernetes node names)"
command -v openssl >/dev/null || die "openssl not found: install it (Debian: apt-get install openssl)"
out=$1
shift

# Kubernetes node names are DNS subdomains (RFC 1123): lower case letters,
# digits, '-' and '.', at most 253 characters. Anything else is refused
# before it reaches a file name, an openssl extension or YAML.
for node in "$@"; do
    if [ "${#node}" -gt 253 ] ||
        ! printf '%s\n' "$node" | grep -Eqx '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'; then
        die "'$node' is not a Kubernetes node name (lower case letters, digits, '-' and '.'; see kubectl get nodes)"
    fi
done

umask 077
mkdir -p "$out/nodes"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME KEY CSR_SUBJECT EXTENSIONS CERT_OUT
sign() {
    openssl req -new -key "$2" -subj "$3" -out "$tmp/$1.csr"
    printf '%b' "$4" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAserial "$out/ca.srl" -CAcreateserial -days "$DAYS" -sha256 \
        -extfile "$tmp/$1.ext" -out "$5" 2>/dev/null
}

if [ ! -f "$out/ca.key" ]; then
    ec_key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -subj "/CN=spyglass-ca" -days 3650 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
    echo "node-certs.sh: new CA $out/ca.crt" >&2
fi
[ -f "$out/ca.crt" ] || die "$out/ca.key exists but $out/ca.crt does not: restore it or start with an empty OUT_DIR"

if [ ! -f "$out/collector.crt" ]; then
    ec_key "$out/collector.key"
    sign collector "$out/collector.key" "/CN=spyglass-collector.$NAMESPACE.svc" \
        "subjectAltName=DNS:spyglass-collector.$NAMESPACE.svc,DNS:spyglass-collector.$NAMESPACE.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n" \
        "$out/collector.crt"
    echo "node-certs.sh: collector certificate $out/collector.crt" >&2
fi

for node in "$@"; do
    d="$out/nodes/$node"
    if [ -f "$d/tls.crt" ]; then
        echo "node-certs.sh: $node: keeping $d/tls.crt" >&2
        continue
    fi
    mkdir -p "$d"
    ec_key "$d/tls.key"
    sign "node" "$d/tls.key" "/CN=$node" \
        "subjectAltName=DNS:$node\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n" \
        "$d/tls.crt"
    cp "$out/ca.crt" "$d/ca.crt"
    echo "node-certs.sh: $node: $d/tls.crt (DNS SAN $node)" >&2
done

b64() { openssl base64 -A -in "$1"; }

{
    printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: spyglass-agent-node-tls\n  namespace: %s\ntype: Opaque\ndata:\n' "$NAMESPACE"
    printf '  ca.crt: %s\n' "$(b64 "$out/ca.crt")"
    for d in "$out"/nodes/*/; do
        node=$(basename "$d")
        printf '  %s.crt: %s\n' "$node" "$(b64 "$d/tls.crt")"
        printf '  %s.key: %s\n' "$node" "$(b64 "$d/tls.key")"
    done
} >"$out/spyglass-agent-node-tls.yaml"

{
    printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: spyglass-collector-tls\n  namespace: %s\ntype: Opaque\ndata:\n' "$NAMESPACE"
    printf '  ca.crt: %s\n' "$(b64 "$out/ca.crt")"
    printf '  tls.crt: %s\n' "$(b64 "$out/collector.crt")"
    printf '  tls.key: %s\n' "$(b64 "$out/collector.key")"
} >"$out/spyglass-collector-tls.yaml"

echo "node-certs.sh: wrote $out/spyglass-agent-node-tls.yaml ($(ls "$out/nodes" | wc -l) nodes) and $out/spyglass-collector-tls.yaml" >&2
