// Command pause is the real node's pod sandbox process (containerd's sandbox_image), the job of
// registry.k8s.io/pause: hold the pod's namespaces, reap orphaned children as PID 1, and exit on
// SIGINT or SIGTERM. Built here so the node needs no registry; the C original needs a C toolchain.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause torghut-localstack\n")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
