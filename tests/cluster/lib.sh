# Shared settings for tests/cluster scripts. Sourced, not run.
# Everything heavy lives outside the repository, keyed by what produced it, so a
# fresh clone on a warm machine rebuilds nothing and a cold machine builds once.
CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=$(cat "$CLUSTER_DIR/k8s-version")            # e.g. 1.35.4
K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
KWOK_VERSION=$(sed -n 's|^\s*sigs.k8s.io/kwok \(v[^ ]*\).*|\1|p' "$CLUSTER_DIR/tools/kwok/go.mod")
HELM_VERSION=$(sed -n 's|^\s*helm.sh/helm/v3 \(v[^ ]*\).*|\1|p' "$CLUSTER_DIR/tools/helm/go.mod")
APIW_CACHE=${APIW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiworkload}
# Built binaries are keyed by every input of the build: module files, mains, build script.
BIN_KEY=$(cd "$CLUSTER_DIR" && cat k8s-version go.mod go.sum cmd/*/main.go tools/{helm,kwok}/go.mod tools/{helm,kwok}/go.sum build | sha256sum | cut -c1-16)
BIN_DIR="$APIW_CACHE/cluster-bin/$BIN_KEY"
# One running cluster per machine user; `up` is idempotent against it.
STATE_DIR=${APIW_CLUSTER_DIR:-$APIW_CACHE/cluster}
KUBECONFIG_PATH="$STATE_DIR/admin.kubeconfig"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
