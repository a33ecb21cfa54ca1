// Command etcd is the etcd server at the version Kubernetes itself requires.
// `go install` of the etcd server module fails on its replace directives;
// built inside this module, those are ignored.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
