#!/usr/bin/env bash
# Regenerates tools/keda/go.mod/go.sum for KEDA at a given release (the operator and
# its metrics adapter, built by tests/cluster/node for the in-flight autoscaling path).
# Run by a developer when bumping KEDA; CI only builds from the committed files.
#
# KEDA pins its Kubernetes libraries (and a few others) with replace directives, which
# Go ignores in a dependency's go.mod: without the same ones, `go get` picks newer
# k8s.io modules and KEDA does not compile. They are copied from KEDA's own go.mod at
# that tag, never typed by hand.
set -euo pipefail
KEDA=${1:?usage: update-keda.sh v2.20.2}
cd "$(dirname "$0")/../tools/keda"
export GOTOOLCHAIN=local
GM=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
cat > go.mod <<MOD
// KEDA for tests/cluster/node: the operator and its external metrics adapter, so a
// ScaledObject with a Prometheus trigger scales real pods. Never published.
module apiworkload.invalid/tests/cluster/tools/keda

go $(sed -n 's/^go //p' "$GM")
MOD
rm -f go.sum
go mod edit -json "$GM" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    new = r["New"]["Path"] + ("@" + r["New"]["Version"] if r["New"].get("Version") else "")
    print(r["Old"]["Path"] + "=" + new)
' | while read -r rep; do go mod edit -replace="$rep"; done
go get -tool "github.com/kedacore/keda/v2/cmd/operator@$KEDA" "github.com/kedacore/keda/v2/cmd/adapter@$KEDA"
go mod tidy
echo "$KEDA" > keda-version
