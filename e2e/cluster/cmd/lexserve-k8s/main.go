// Command lexserve-k8s is a multi-call binary holding the Kubernetes control plane that
// lexserve's e2e tests run against: kube-apiserver, kube-controller-manager, kube-scheduler
// and etcd.
//
// Why one binary: on a 2-core machine, linking is a large share of a Kubernetes build, and
// the four components share most of their packages. One link of one binary is cheaper than
// four links of four binaries, and the build cache serves the rest.
//
// It dispatches on the name it was called by (setup.sh makes symlinks named after each
// component), or on its first argument: `lexserve-k8s kube-apiserver --help`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// components maps a component's name to a function that runs it with os.Args already set to
// what that component expects (its own name first) and returns its exit code.
var components = map[string]func() int{
	"kube-apiserver": func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"etcd": func() int {
		etcdmain.Main(os.Args)
		return 0
	},
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		// Called as `lexserve-k8s COMPONENT ARGS...`: drop our own name.
		if run, ok = components[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	if !ok {
		names := make([]string, 0, len(components))
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [ARGS...], or call it through a link named after COMPONENT\ncomponents: %v\n", name, names)
		os.Exit(2)
	}
	os.Exit(run())
}
