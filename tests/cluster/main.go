// Command cluster is a multi-call binary: the first argument picks etcd,
// kube-apiserver or kube-controller-manager, and the rest are that program's
// flags. One binary keeps the cold build to a single link step.
package main

import (
	"fmt"
	"os"

	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cluster etcd|kube-apiserver|kube-controller-manager [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	// Each program parses os.Args as if it had been started under its own name.
	os.Args = append([]string{mode}, os.Args[2:]...)
	switch mode {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown program %q\n", mode)
		os.Exit(2)
	}
}
