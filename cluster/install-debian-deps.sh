#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, and only those that are missing:
#   Postgres and Prometheus (the world the operator reads), containerd, runc, the CNI plugins,
#   iptables and conntrack (the real node and kube-proxy), busybox-static (the test image's
#   root filesystem), mmdebstrap, umoci and skopeo (images built without Docker), redis-server and git
#   (Argo CD's Redis, its repo server's git and the `git daemon` of the GitOps tests).
# Used by .ci/run, `make demo`, `make test` and `make cluster-up`. Nothing it installs may run as a
# system service: the stack starts its own processes, so any service a package starts is stopped
# and disabled. Without root it uses sudo, or names the missing packages and exits 1.
set -euo pipefail

packages=(
  postgresql-15 prometheus
  containerd runc containernetworking-plugins iptables conntrack
  busybox-static mmdebstrap umoci skopeo
  redis-server git
  python3 python3-venv make curl
)
# Debian services these packages would start; the stack runs its own instances instead.
services=(postgresql prometheus containerd redis-server)

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  elif [ ${#missing[@]} -gt 0 ]; then
    echo "install-debian-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-debian-deps: run as root: apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-debian-deps: installing ${missing[*]}"
  start=$SECONDS
  # policy-rc.d exit 101 is Debian's way of saying "start no service" to every maintainer script.
  policy=/usr/sbin/policy-rc.d
  added_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    added_policy=true
  fi
  trap '[ "$added_policy" = true ] && "${as_root[@]}" rm -f "$policy"' EXIT
  apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
  "${apt[@]}" update
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-debian-deps: installed in $((SECONDS - start))s"
fi

# Whatever a package (or an earlier install) started as a service is stopped and disabled.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  for svc in "${services[@]}"; do
    if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
      "${as_root[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
      echo "install-debian-deps: stopped and disabled the $svc service"
    fi
  done
fi
