// Command attestd-caa-userdata renders a peer pod's user-data the way
// cloud-api-adaptor's CreateSandbox does (pkg/adaptor/cloud/cloud.go), with its
// own code: the init-data annotation re-encoded by initdata.Encode (all that
// util.GetInitdataFromAnnotation does with it; that package itself needs a kata
// runtime module the Go proxy does not serve), or the peer-pods-cm's global
// INITDATA, already encoded, when the pod has none; APF's config, the pod's
// registry credentials and the scratch-space marker; rendered by
// cloudinit.CloudConfig.Generate.
//
// It has no go.mod: scripts/peers-build.sh builds it inside cloud-api-adaptor's
// own module, at the commit pinned in scripts/peers.pins, so it links exactly
// that commit's code. The comparison test (tests/tests/podvm_config.rs) feeds
// what it prints to process-user-data and to attestd-podvm.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/confidential-containers/cloud-api-adaptor/src/cloud-api-adaptor/pkg/initdata"
	"github.com/confidential-containers/cloud-api-adaptor/src/cloud-api-adaptor/pkg/paths"
	"github.com/confidential-containers/cloud-api-adaptor/src/cloud-providers/util/cloudinit"
)

func read(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return string(b)
}

func main() {
	annotation := flag.String("annotation", "", "file holding the pod's io.katacontainers.config.hypervisor.cc_init_data value")
	global := flag.String("global-initdata", "", "file holding peer-pods-cm's INITDATA (already encoded)")
	apf := flag.String("apf-json", "", "file holding APF's config")
	auth := flag.String("auth-json", "", "file holding the pod's registry credentials")
	scratch := flag.Bool("scratch-space", false, "ask for encrypted scratch space")
	flag.Parse()

	cc := &cloudinit.CloudConfig{WriteFiles: []cloudinit.WriteFile{
		{Path: paths.ForwarderCfgPath, Content: read(*apf)},
	}}
	if a := read(*auth); a != "" {
		cc.WriteFiles = append(cc.WriteFiles, cloudinit.WriteFile{Path: paths.AuthFilePath, Content: a})
	}
	enc := ""
	if a := read(*annotation); a != "" {
		var err error
		if enc, err = initdata.Encode(a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if enc == "" {
		enc = read(*global)
	}
	if enc != "" {
		cc.WriteFiles = append(cc.WriteFiles, cloudinit.WriteFile{Path: paths.InitDataPath, Content: enc})
	}
	if *scratch {
		cc.WriteFiles = append(cc.WriteFiles, cloudinit.WriteFile{Path: paths.ScratchSpacePath, Content: ""})
	}
	out, err := cc.Generate()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Print(out)
}
