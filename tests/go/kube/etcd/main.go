// etcd's own main (go.etcd.io/etcd/v3's main.go) is this one call; the server
// module holds everything it runs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
