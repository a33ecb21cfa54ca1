//go:build tools

// Package gobuild pins the Kubernetes control-plane commands that the local
// cluster builds. Nothing here runs; the blank imports keep the commands in
// the module's build list so `go build` can name them.
package gobuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
