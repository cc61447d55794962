package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// TestHostileBackupStore plants damaged and hostile manifests in a
// filesystem target that `cairn standalone` uses, and checks what a user
// sees through CSI and `cairn backup`: the good backup stays listed and
// restorable, new backups work, the damaged ones are refused with
// FailedPrecondition naming the object, verify names them (exit 3), GC
// refuses naming them, and the driver never dies.
func TestHostileBackupStore(t *testing.T) {
	url, args := fileTarget(t)
	dir := strings.TrimPrefix(url, "file://")
	e := newEnvArgs(t, "xfs", args)
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "hostile-src", Bytes: 64 * mib, Block: true}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, true, ""))
	data := randomBytes(t, 8<<20)
	writeDevice(t, m.Target, 0, data)
	good := e.waitBackup("hostile-good", v.GetVolumeId(), 2*time.Minute)
	gh, err := model.ParseBackupHandle(good.GetSnapshotId())
	if err != nil {
		t.Fatal(err)
	}
	goodKey := filepath.Join(dir, "backups", gh.VolumeID, gh.BackupID+".json")
	goodBytes, err := os.ReadFile(goodKey)
	if err != nil {
		t.Fatal(err)
	}

	// A garbage manifest, a copy of the good one under another key, and
	// one of a newer format.
	plant := func(vol, name string, b []byte) string {
		id := model.BackupIDForName(name)
		p := filepath.Join(dir, "backups", vol, id+".json")
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "bs://t1/" + vol + "/" + id
	}
	garbage := plant("v-garbage", "g", []byte(`{"formatVersion":1,"blocks":[[0,"ab","cd",-1,1125899906842624,1125899906842624,"zstd"]]`))
	copied := plant("v-copy", "c", goodBytes)
	newer := plant(gh.VolumeID, "n", []byte(strings.Replace(string(goodBytes), `"formatVersion":1`, `"formatVersion":99`, 1)))

	ls := must[*csipb.ListSnapshotsResponse](t)(e.d.Controller().ListSnapshots(e.ctx, &csipb.ListSnapshotsRequest{}))
	var ids []string
	for _, en := range ls.GetEntries() {
		ids = append(ids, en.GetSnapshot().GetSnapshotId())
	}
	if strings.Join(ids, ",") != good.GetSnapshotId() {
		t.Fatalf("ListSnapshots with damaged manifests in the target: %v, want only %s", ids, good.GetSnapshotId())
	}
	// A new backup is not stopped by them.
	writeDevice(t, m.Target, 16<<20, data[:1<<20])
	e.waitBackup("hostile-new", v.GetVolumeId(), 2*time.Minute)

	for name, handle := range map[string]string{"garbage": garbage, "copy under another key": copied, "newer format": newer} {
		_, err := e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "restore-" + strings.ReplaceAll(name, " ", "-"), Bytes: 64 * mib, Block: true, FromSnapshot: handle})
		h, _ := model.ParseBackupHandle(handle)
		if status.Code(errorsUnwrap(err)) != codes.FailedPrecondition || !strings.Contains(err.Error(), h.BackupID) {
			t.Errorf("restore from the %s manifest: %v; want FailedPrecondition naming it", name, err)
		}
	}
	// The good backup still restores byte for byte.
	r := e.createVolumeRetrying(harness.VolumeSpec{Name: "restore-good", Bytes: 64 * mib, Block: true, FromSnapshot: good.GetSnapshotId()}, 2*time.Minute)
	rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, true, ""))
	if got := readDevice(t, rm.Target, 8<<20); string(got) != string(data) {
		t.Error("the good backup restored different data")
	}

	cli := func(args ...string) (string, int) {
		out, err := exec.Command(binary, append([]string{"backup"}, append(args, "--target", url)...)...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := cli("verify"); code != 3 || !strings.Contains(out, "v-garbage/"+model.BackupIDForName("g")) || !strings.Contains(out, "v-copy/"+model.BackupIDForName("c")) {
		t.Errorf("cairn backup verify: exit %d, output:\n%s\nwant exit 3 naming every damaged backup", code, out)
	}
	if out, code := cli("gc", "--min-age", "0s"); code == 0 || !strings.Contains(out, "v-garbage") {
		t.Errorf("cairn backup gc with damaged manifests: exit %d, output:\n%s\nwant a refusal naming them", code, out)
	}
	if out, code := cli("list"); code != 0 || !strings.Contains(out, gh.BackupID) || !strings.Contains(out, "v-garbage") {
		t.Errorf("cairn backup list: exit %d, output:\n%s\nwant the good backups and a warning naming the damaged", code, out)
	}
	// The driver is alive.
	if _, err := e.d.Identity().Probe(e.ctx, &csipb.ProbeRequest{}); err != nil {
		t.Fatalf("driver after hostile input: %v", err)
	}
	unmountAll(t, e, rm, m)
	e.noLeaks()
}
