// etcd at exactly the version k8s.io/kubernetes pins (Debian's 3.4.23 is too old:
// no watch-progress, so streaming lists fail).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
