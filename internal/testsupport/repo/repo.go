// Package repo locates the repository from the e2e tests.
package repo

import (
	"os"
	"path/filepath"
	"testing"
)

// Root walks up from the working directory to the go.mod and returns its
// folder, failing t if there is none.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}
