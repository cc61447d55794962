package main

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// TestBackupCLI runs the built binary against a filesystem target and
// checks what scripts rely on: output, and exit codes for success, a
// missing backup, a damaged block and bad usage.
func TestBackupCLI(t *testing.T) {
	dir := t.TempDir()
	bin, err := harness.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	target := "file://" + filepath.Join(dir, "target")
	os.MkdirAll(filepath.Join(dir, "target"), 0o755)
	st, err := objstore.Open(context.Background(), target, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := backup.Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "vol")
	data := make([]byte, 12<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	claim := &model.Claim{Name: "mysql-pvc", Namespace: "shop", StorageClassName: "cairn", AccessModes: []string{"ReadWriteOnce"}, VolumeMode: "Filesystem", RequestBytes: 12 << 20}
	m, err := repo.Backup(context.Background(), backup.Source{Path: src}, backup.Meta{BackupID: model.BackupIDForName("snap"), VolumeID: "v-1", SnapshotName: "snap", Claim: claim}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := m.VolumeID + "/" + m.ID

	run := func(args ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"backup"}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	expect := func(code int, want string, args ...string) {
		t.Helper()
		out, got := run(args...)
		if got != code || !strings.Contains(out, want) {
			t.Errorf("cairn backup %s: exit %d, want %d; output must contain %q:\n%s", strings.Join(args, " "), got, code, want, out)
		}
	}
	expect(0, m.ID, "list", "--target", target)
	expect(0, "Stored blocks:", "show", ref, "--target", target)
	shown, _ := run("show", ref, "--target", target)
	for _, line := range []string{`PVC:\s+shop/mysql-pvc\n`, `StorageClass:\s+cairn\n`, `Access modes:\s+ReadWriteOnce\n`, `Volume mode:\s+Filesystem\n`, `Requested:\s+12.0 MiB\n`} {
		if !regexp.MustCompile(line).MatchString(shown) {
			t.Errorf("cairn backup show: no line %s:\n%s", line, shown)
		}
	}
	expect(0, `"accessModes": [`, "show", ref, "--json", "--target", target)
	expect(0, "verified 1 backups: 3 blocks", "verify", "--target", target)
	standby := filepath.Join(dir, "standby.img")
	expect(0, "restored in full", "standby", "--volume", "v-1", "--to", standby, "--once", "--target", target)
	expect(0, "up to date", "standby", "--volume", "v-1", "--to", standby, "--once", "--target", target)
	if got, _ := os.ReadFile(standby); string(got) != string(data) {
		t.Error("standby image differs from the backed-up file")
	}
	expect(2, "--volume ID and --to FILE", "standby", "--to", standby, "--target", target)
	restored := filepath.Join(dir, "restored")
	expect(0, "restored", "restore", "bs://t/"+ref, "--to", restored, "--target", target)
	if got, _ := os.ReadFile(restored); string(got) != string(data) {
		t.Error("restored file differs")
	}
	expect(4, "not found", "show", "v-1/"+model.BackupIDForName("other"), "--target", target)
	expect(2, "VOLUME/BACKUP", "show", "nonsense", "--target", target)
	expect(2, "unknown command", "frobnicate", "--target", target)

	// Damage one block: verify names it and exits 3; restore refuses.
	e := m.Blocks[1]
	pack := filepath.Join(dir, "target", "packs", e.Pack[:2], e.Pack)
	f, err := os.OpenFile(pack, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, e.Loc.Offset+10)
	b[0] ^= 1
	f.WriteAt(b, e.Loc.Offset+10)
	f.Close()
	expect(3, "DAMAGED backup "+ref+" block at offset 4194304", "verify", "--target", target)
	expect(1, "volume offset 4194304", "restore", ref, "--to", filepath.Join(dir, "restored2"), "--target", target)

	expect(0, "deleted", "delete", ref, "--target", target)
	expect(0, "deleted 1", "gc", "--min-age", "0s", "--target", target)
}
