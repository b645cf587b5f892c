//go:build tools

// The command scripts/go-build.sh builds, so `go mod tidy` keeps its
// dependencies in go.sum.
package skopeo

import (
	_ "github.com/containers/skopeo/cmd/skopeo"
)
