//go:build tools

// Package argocd pins Argo CD's single command in the module's build list so `go build` can name it.
package argocd

import _ "github.com/argoproj/argo-cd/v3/cmd"
