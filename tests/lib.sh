# Shared by tests/run and tests/demo: installs what the project needs on a fresh
# machine and points cargo at a target dir outside the repo. Sourced, not run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APIW_CACHE=${APIW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiworkload}
say() { printf '\n==> %s\n' "$*" >&2; }

install_prerequisites() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null && command -v setpriv >/dev/null && command -v unshare >/dev/null ||
    missing+=(util-linux)
  # Network namespaces: the real node's and the healthy-app test's.
  command -v ip >/dev/null || missing+=(iproute2)
  # A real DNS server for the sidecar's DNS tests.
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  # Prometheus and promtool: the dashboards' queries and the alert rules are tested with them.
  command -v promtool >/dev/null || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}" >/dev/null; fi
  fi
  command -v go >/dev/null || { echo "Go is required (it builds the test control plane)" >&2; exit 1; }
  command -v cargo >/dev/null || { echo "Rust (cargo) is required" >&2; exit 1; }
  if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >&2
  fi
}

# One cargo target dir per lockfile and compiler: a fresh clone on a warm machine
# compiles only the workspace crates.
use_cargo_cache() {
  local key
  key=$( (cat "$REPO/Cargo.lock" 2>/dev/null; rustc -V) | sha256sum | cut -c1-16)
  if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    # Only the current one is kept: each is gigabytes, and a machine that keeps every
    # lockfile's build fills its disk (CI once failed with "No space left on device").
    find "$APIW_CACHE/cargo-target" -mindepth 1 -maxdepth 1 -type d ! -name "$key" \
      -exec rm -rf {} + 2>/dev/null || true
    export CARGO_TARGET_DIR=$APIW_CACHE/cargo-target/$key
  fi
  mkdir -p "$CARGO_TARGET_DIR"
  # The sidecar tests copy the binary to /tmp for another UID (one copy per build);
  # copies from earlier runs are removed.
  find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'apiw-sidecar-*' -mmin +180 \
    -exec rm -rf {} + 2>/dev/null || true
}

# A venv with the pinned Python test servers (tests/apps/requirements.txt), one per
# requirements hash; exported as APIW_VENV for the tests.
use_python_env() {
  local key
  key=$( (cat "$REPO/tests/apps/requirements.txt"; python3 -V) | sha256sum | cut -c1-16)
  export APIW_VENV=$APIW_CACHE/venv/$key
  # Built in place (a moved venv's scripts point at the old path); .complete marks success.
  if [ ! -f "$APIW_VENV/.complete" ]; then
    say "installing the Python test servers into $APIW_VENV"
    rm -rf "$APIW_VENV"
    python3 -m venv "$APIW_VENV"
    "$APIW_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REPO/tests/apps/requirements.txt"
    touch "$APIW_VENV/.complete"
  fi
}
