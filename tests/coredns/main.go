// Command coredns is the local node's cluster DNS: CoreDNS built with only the
// plugins its Corefile uses (bind, health, ready, errors, cache, kubernetes).
// Without `forward` it answers for the cluster domain and refuses every other
// name, so pods can resolve Services but never reach a resolver beyond this
// machine. Built and cached by beatkeeper_devenv.build; never imported.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order plugins run in, as core/dnsserver/zdirectives.go orders them.
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
