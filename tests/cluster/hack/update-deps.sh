#!/usr/bin/env bash
# Regenerates go.mod/go.sum for the test control plane at a given Kubernetes release.
# Run by a developer when bumping the version; CI only builds from the committed files.
#
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
# ./staging/...; those replaces are ignored for a dependency, so we replace every one
# of them with the published k8s.io/<name> v0.<minor>.<patch>. The list is read from
# upstream's go.mod at that tag, never typed by hand (kubernetes#79384).
set -euo pipefail
KV=${1:?usage: update-deps.sh 1.35.4}
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
GM=$(go mod download -json "k8s.io/kubernetes@v$KV" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
ETCD=$(sed -n 's|^\s*go.etcd.io/etcd/server/v3 \(v[^ ]*\).*|\1|p' "$GM")
for M in $(sed -n 's|^\s*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' "$GM"); do
  go mod edit -replace="$M=$M@v0.${KV#1.}"
done
go get "k8s.io/kubernetes@v$KV" "go.etcd.io/etcd/server/v3@$ETCD"
go mod tidy
echo "$KV" > k8s-version
