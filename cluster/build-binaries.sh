#!/usr/bin/env bash
# Builds the local control plane from Go modules into a cache outside the repository:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok,
#   the real node's kubelet, kube-proxy, pod sandbox program (pause) and CoreDNS,
#   and kind (the e2e suite's other cluster, and the test that loads kind-config.yaml with kind's own code).
# The cache folder is keyed by the pinned versions; a binary that is missing or fails its
# version check is rebuilt, nothing else is. Prints the cache folder on the last line.
#
# --with-argocd: also Argo CD and kustomize (cluster/build-argocd.sh, their own cache folder; about 10 min cold),
# which the GitOps e2e tests and `make demo GITOPS=1` need.
set -euo pipefail

with_argocd=0
for arg in "$@"; do
  case $arg in
    --with-argocd) with_argocd=1 ;;
    *) echo "build-binaries: unknown argument $arg (use --with-argocd)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${TORGHUT_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torghut-rollout-operator}
bin_dir="$cache_root/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
mkdir -p "$bin_dir"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null || { echo "build-binaries: go is not on PATH" >&2; exit 1; }

k8s_ver=${KUBERNETES_VERSION#v}
major=${k8s_ver%%.*}
minor=${k8s_ver#*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# healthy NAME: the binary exists and answers its version flag with the pinned version.
healthy() {
  local name=$1 want
  [ -x "$bin_dir/$name" ] || return 1
  case $name in
    etcd) want=$ETCD_VERSION ;;
    pause) want=torghut-localstack ;;
    coredns) want=$COREDNS_VERSION ;;
    kwok) want=$KWOK_VERSION ;;
    kind) want=$KIND_VERSION ;;
    *) want=$KUBERNETES_VERSION ;;
  esac
  local out
  case $name in
    kubectl) out=$("$bin_dir/$name" version --client 2>/dev/null) ;;
    pause) out=$("$bin_dir/$name" -v 2>/dev/null) ;;
    coredns) out=$("$bin_dir/$name" -version 2>/dev/null) ;;
    *) out=$("$bin_dir/$name" --version 2>/dev/null) ;;
  esac || return 1
  grep -q -- "${want#v}" <<<"$out"
}

# build NAME MODULE@VERSION COMMAND...: runs the build, names what failed and why.
build() {
  local name=$1 what=$2; shift 2
  if healthy "$name"; then
    echo "build-binaries: $name cached"
    return
  fi
  echo "build-binaries: building $name ($what) ..."
  local start=$SECONDS log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "build-binaries: FAILED to build $name from $what (Go $(go env GOVERSION)):" >&2
    tail -n 40 "$log" >&2
    rm -f "$log" "$bin_dir/$name"
    exit 1
  fi
  rm -f "$log"
  healthy "$name" || { echo "build-binaries: $name built but does not report $what" >&2; exit 1; }
  echo "build-binaries: built $name in $((SECONDS - start))s, $(du -h "$bin_dir/$name" | cut -f1)"
}

total_start=$SECONDS
cd "$here/gobuild"
build etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
  go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" ./etcd
build pause "cluster/gobuild/pause" \
  go build -trimpath -ldflags "-s -w" -o "$bin_dir/pause" ./pause
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  build "$cmd" "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
# kwok is its own module without replace directives: build it apart from Kubernetes'.
build kwok "sigs.k8s.io/kwok@$KWOK_VERSION" \
  env GOBIN="$bin_dir" go install -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# CoreDNS too (its go.mod has no replace directives): the real node's cluster DNS.
build coredns "github.com/coredns/coredns@$COREDNS_VERSION" \
  env GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" \
  "github.com/coredns/coredns@$COREDNS_VERSION"
# kind: its own module, no replace directives; about 10 s and 10 MB.
build kind "sigs.k8s.io/kind@$KIND_VERSION" \
  env GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
if [ "$with_argocd" = 1 ]; then
  # Its folder is printed on its last line; ours must stay the last line of this script.
  bash "$here/build-argocd.sh" | sed '$d'
fi
echo "build-binaries: all binaries ready in $((SECONDS - total_start))s"
echo "$bin_dir"
