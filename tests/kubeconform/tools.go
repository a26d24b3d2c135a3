//go:build tools

// Package kubeconform pins kubeconform, the manifest validator GitOps pipelines
// run, so the tests can check the project's JSON schemas with the real tool.
// beatkeeper_devenv.build builds its command from this module and caches it;
// this file is never compiled.
package kubeconform

import _ "github.com/yannh/kubeconform/cmd/kubeconform"
