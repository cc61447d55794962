// Package arch checks the import graph that docs/ARCHITECTURE.md states:
// who may import whom among Cairn's packages, and which packages must not
// link storage code at all. It reads the graph with `go list`, so a
// forbidden import fails `make test`.
package arch

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cairn-csi/cairn/"

// allowed lists, for each production package, the Cairn packages it may
// import directly. A package missing here fails the test: a new package
// states its place in the graph when it is added.
var allowed = map[string][]string{
	"internal/model":               {},
	"internal/fsops":               {},
	"internal/loop":                {},
	"internal/iolimit":             {"internal/model"},
	"internal/faults":              {},
	"internal/registrar":           {},
	"internal/objstore":            {},
	"internal/kube/api/v1alpha1":   {},
	"internal/backup":              {"internal/model", "internal/objstore", "internal/fsops", "internal/faults"},
	"internal/engine":              {"internal/model", "internal/backup", "internal/objstore", "internal/fsops", "internal/loop", "internal/iolimit", "internal/faults"},
	"internal/csi":                 {"internal/model"},
	"internal/kube":                {"internal/model", "internal/kube/api/v1alpha1"},
	"internal/control/local":       {"internal/csi", "internal/model", "internal/engine"},
	"internal/control/remote":      {"internal/csi", "internal/model", "internal/kube", "internal/kube/api/v1alpha1"},
	"internal/control/metadatasvc": {},
	"internal/control/policy":      {"internal/model", "internal/kube/api/v1alpha1"},
	"internal/control/standby":     {"internal/model", "internal/kube/api/v1alpha1"},
	"internal/ui":                  {"internal/model", "internal/kube", "internal/kube/api/v1alpha1"},
	"internal/agent":               {"internal/model", "internal/engine", "internal/kube", "internal/kube/api/v1alpha1", "internal/objstore", "internal/backup"},
	"cmd/cairn": {"internal/model", "internal/csi", "internal/control/local", "internal/control/remote", "internal/agent",
		"internal/kube", "internal/engine", "internal/backup", "internal/objstore", "internal/registrar", "internal/control/metadatasvc", "internal/control/policy",
		"internal/control/standby", "internal/ui"},
}

// storage is what the controller side must not link, even indirectly: the
// disk engine, its platform code, the backup store and mount-utils.
var storage = []string{
	module + "internal/engine", module + "internal/loop", module + "internal/iolimit", module + "internal/fsops", module + "internal/faults",
	module + "internal/backup", module + "internal/objstore", "k8s.io/mount-utils",
}

// controllerSide are the packages `cairn controller` runs: the CSI
// adapter, the remote backend, the protection policies, the standby
// volumes' controller and what they share.
var controllerSide = []string{"internal/model", "internal/csi", "internal/kube", "internal/control/remote", "internal/control/policy", "internal/control/standby", "internal/ui"}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json=ImportPath,Imports,Deps"}, patterns...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestImportRules(t *testing.T) {
	for _, p := range list(t, "./internal/...", "./cmd/...") {
		name := strings.TrimPrefix(p.ImportPath, module)
		if strings.HasPrefix(name, "internal/testsupport/") {
			continue // test support may use anything production has
		}
		rule, ok := allowed[name]
		if !ok {
			t.Errorf("%s is not in the import rules (test/arch and docs/ARCHITECTURE.md): add it", name)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			if dep := strings.TrimPrefix(imp, module); !slices.Contains(rule, dep) {
				t.Errorf("%s imports %s, which docs/ARCHITECTURE.md does not allow", name, dep)
			}
		}
	}
}

func TestControllerLinksNoStorage(t *testing.T) {
	var patterns []string
	for _, p := range controllerSide {
		patterns = append(patterns, "./"+p)
	}
	for _, p := range list(t, patterns...) {
		for _, d := range p.Deps {
			if slices.Contains(storage, d) {
				t.Errorf("%s links %s: the controller side must not depend on storage code", strings.TrimPrefix(p.ImportPath, module), d)
			}
		}
		if len(p.Deps) == 0 {
			t.Errorf("%s: go list reported no dependencies; the check would pass vacuously", p.ImportPath)
		}
	}
}

// Production code never imports test support (tests may).
func TestNoTestSupportInProduction(t *testing.T) {
	for _, p := range list(t, "./internal/...", "./cmd/...") {
		name := strings.TrimPrefix(p.ImportPath, module)
		if strings.HasPrefix(name, "internal/testsupport/") {
			continue
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"internal/testsupport/") {
				t.Errorf("%s imports %s", name, imp)
			}
		}
	}
}
