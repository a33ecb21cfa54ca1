#!/usr/bin/env bash
# Builds Argo CD (one binary: application controller, repo server, API server and the `argocd` CLI) and the
# kustomize its repo server runs, from Go modules, into a cache folder keyed by their versions (like
# build-binaries.sh, which calls this with --with-argocd). A binary that is missing or fails its version check is
# rebuilt, nothing else is. Prints the cache folder on the last line.
#
# Argo CD comes from cluster/argocd (its module pinned, its replace block copied verbatim); kustomize is its own
# module without replaces. Cold: about 10 min on 2 cores (9 min 58 s measured) and 2.0 GB peak RSS (the link); warm: seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${TORGHUT_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torghut-rollout-operator}
bin_dir="$cache_root/bin/argocd-$ARGOCD_VERSION-kustomize-$KUSTOMIZE_VERSION"
mkdir -p "$bin_dir"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null || { echo "build-argocd: go is not on PATH" >&2; exit 1; }

# The module must pin the version versions.env names, or the folder name would lie.
grep -q "^require github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION\$" "$here/argocd/go.mod" || {
  echo "build-argocd: cluster/argocd/go.mod does not require argo-cd/v3 $ARGOCD_VERSION (versions.env)" >&2
  exit 1
}

# healthy NAME: the binary exists and reports the pinned version.
healthy() {
  local name=$1 out want
  [ -x "$bin_dir/$name" ] || return 1
  case $name in
    argocd) want=$ARGOCD_VERSION; out=$(ARGOCD_BINARY_NAME=argocd "$bin_dir/argocd" version --client --short 2>/dev/null) ;;
    kustomize) want=$KUSTOMIZE_VERSION; out=$("$bin_dir/kustomize" version 2>/dev/null) ;;
  esac || return 1
  grep -q -- "$want" <<<"$out"
}

# build NAME WHAT COMMAND...: runs the build, names what failed and why.
build() {
  local name=$1 what=$2; shift 2
  if healthy "$name"; then
    echo "build-argocd: $name cached"
    return
  fi
  echo "build-argocd: building $name ($what) ..."
  local start=$SECONDS log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "build-argocd: FAILED to build $name from $what (Go $(go env GOVERSION)):" >&2
    tail -n 40 "$log" >&2
    rm -f "$log" "$bin_dir/$name"
    exit 1
  fi
  rm -f "$log"
  healthy "$name" || { echo "build-argocd: $name built but does not report $what" >&2; exit 1; }
  echo "build-argocd: built $name in $((SECONDS - start))s, $(du -h "$bin_dir/$name" | cut -f1)"
}

total_start=$SECONDS
cd "$here/argocd"
build argocd "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" \
  go build -trimpath -ldflags "-s -w -X github.com/argoproj/argo-cd/v3/common.version=${ARGOCD_VERSION#v}" \
  -o "$bin_dir/argocd" github.com/argoproj/argo-cd/v3/cmd
build kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
  env GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
echo "build-argocd: argocd and kustomize ready in $((SECONDS - total_start))s"
echo "$bin_dir"
