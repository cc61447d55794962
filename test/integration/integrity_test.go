package integration

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/walkthrough"
)

const mib = int64(1) << 20

// TestWalkthrough runs the quick start's mysql-pvc walkthrough on both kinds
// of data root.
func TestWalkthrough(t *testing.T) {
	for _, root := range []string{"xfs", "ext4"} {
		t.Run(root+"-root", func(t *testing.T) {
			e := newEnv(t, root)
			var out bytes.Buffer
			err := walkthrough.Run(e.ctx, e.d, e.mnt, &out)
			t.Logf("\n%s", out.String())
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func fsSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRestoreIntoLargerVolume restores a snapshot of a 512Mi volume into a
// 1Gi volume: the file system is the larger size and the data identical,
// for both file systems.
func TestRestoreIntoLargerVolume(t *testing.T) {
	e := newEnv(t, "xfs")
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			src := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "small-" + fsType, Bytes: 512 * mib, FsType: fsType}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, src.GetVolumeId(), e.mnt, false, fsType))
			data := randomBytes(t, 8<<20)
			writeFile(t, filepath.Join(m.Target, "data"), data)
			small := fsSize(t, m.Target)
			snap := must[*csipb.Snapshot](t)(e.d.Snapshot(e.ctx, "snap-"+fsType, src.GetVolumeId()))
			big := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "big-" + fsType, Bytes: 1024 * mib, FsType: fsType, FromSnapshot: snap.GetSnapshotId()}))
			if big.GetCapacityBytes() != 1024*mib {
				t.Fatalf("restored capacity %d, want %d", big.GetCapacityBytes(), 1024*mib)
			}
			bm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, big.GetVolumeId(), e.mnt, false, fsType))
			if got := fsSize(t, bm.Target); got < small*18/10 {
				t.Errorf("restored file system is %d bytes, want about twice the source's %d", got, small)
			}
			if !bytes.Equal(readFile(t, filepath.Join(bm.Target, "data")), data) {
				t.Error("restored data differs from the source")
			}
			for _, mm := range []*harness.Mounted{bm, m} {
				if err := e.d.Unmount(e.ctx, mm); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	e.noLeaks()
}

// TestOnlineExpandXFS grows a mounted XFS volume: the mounted file system
// grows without an unmount and keeps its data.
func TestOnlineExpandXFS(t *testing.T) {
	e := newEnv(t, "xfs")
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "grow-xfs", Bytes: 512 * mib, FsType: "xfs"}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, "xfs"))
	data := randomBytes(t, 4<<20)
	writeFile(t, filepath.Join(m.Target, "data"), data)
	before := fsSize(t, m.Target)
	size := must[int64](t)(e.d.Expand(e.ctx, v.GetVolumeId(), 1536*mib, m.Target))
	if size < 1536*mib {
		t.Fatalf("NodeExpandVolume reported %d bytes, want ≥ %d", size, 1536*mib)
	}
	after := fsSize(t, m.Target)
	if after < before*25/10 {
		t.Fatalf("mounted file system grew from %d to %d bytes, want about 3x", before, after)
	}
	if !bytes.Equal(readFile(t, filepath.Join(m.Target, "data")), data) {
		t.Error("data changed by online expansion")
	}
	if err := e.d.Unmount(e.ctx, m); err != nil {
		t.Fatal(err)
	}
	e.noLeaks()
}

// TestOnlineExpandExt4 grows a mounted ext4 volume. Where the kernel allows
// online ext4 growth the file system must grow; where it refuses (no
// CAP_SYS_RESOURCE, as in this sandbox) the error must say so clearly and
// a later unstage + stage must grow it offline.
func TestOnlineExpandExt4(t *testing.T) {
	e := newEnv(t, "xfs")
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "grow-ext4", Bytes: 256 * mib}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
	data := randomBytes(t, 4<<20)
	writeFile(t, filepath.Join(m.Target, "data"), data)
	before := fsSize(t, m.Target)
	_, err := e.d.Expand(e.ctx, v.GetVolumeId(), 512*mib, m.Target)
	if err != nil {
		if !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") || !strings.Contains(err.Error(), "resize2fs") {
			t.Fatalf("online ext4 growth failed without a clear reason: %v", err)
		}
		t.Logf("kernel refused online ext4 growth, as expected here: %v", err)
		if err := e.d.Unmount(e.ctx, m); err != nil {
			t.Fatal(err)
		}
		m = must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
	}
	if after := fsSize(t, m.Target); after < before*18/10 {
		t.Fatalf("ext4 file system is %d bytes after growth from %d, want about twice", after, before)
	}
	if !bytes.Equal(readFile(t, filepath.Join(m.Target, "data")), data) {
		t.Error("data changed by expansion")
	}
	if err := e.d.Unmount(e.ctx, m); err != nil {
		t.Fatal(err)
	}
	e.noLeaks()
}

// TestOfflineExpandThenStage grows a detached volume and stages it: the
// file system is the new size, for ext4 and xfs.
func TestOfflineExpandThenStage(t *testing.T) {
	e := newEnv(t, "xfs")
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "offline-" + fsType, Bytes: 512 * mib, FsType: fsType}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, fsType))
			data := randomBytes(t, 4<<20)
			writeFile(t, filepath.Join(m.Target, "data"), data)
			before := fsSize(t, m.Target)
			if err := e.d.Unmount(e.ctx, m); err != nil {
				t.Fatal(err)
			}
			if size := must[int64](t)(e.d.Expand(e.ctx, v.GetVolumeId(), 1024*mib, "")); size != 1024*mib {
				t.Fatalf("capacity %d after offline expansion, want %d", size, 1024*mib)
			}
			m = must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, fsType))
			if after := fsSize(t, m.Target); after < before*18/10 {
				t.Fatalf("file system is %d bytes after offline growth from %d", after, before)
			}
			if !bytes.Equal(readFile(t, filepath.Join(m.Target, "data")), data) {
				t.Error("data changed by offline expansion")
			}
			if err := e.d.Unmount(e.ctx, m); err != nil {
				t.Fatal(err)
			}
		})
	}
	e.noLeaks()
}

// TestBlockSnapshotRestore writes raw bytes to a published block volume,
// snapshots it, overwrites, and checks that the restore and a clone read
// back exactly what they should, on both data roots.
func TestBlockSnapshotRestore(t *testing.T) {
	for _, root := range []string{"xfs", "ext4"} {
		t.Run(root+"-root", func(t *testing.T) {
			e := newEnv(t, root)
			const size = 64 * mib
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "raw", Bytes: size, Block: true}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, true, ""))
			before := randomBytes(t, int(size))
			writeDevice(t, m.Target, 0, before)
			snap := must[*csipb.Snapshot](t)(e.d.Snapshot(e.ctx, "raw-snap", v.GetVolumeId()))
			later := randomBytes(t, int(4*mib))
			writeDevice(t, m.Target, 8*mib, later)

			r := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "raw-restore", Bytes: size, Block: true, FromSnapshot: snap.GetSnapshotId()}))
			rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, true, ""))
			if !bytes.Equal(readDevice(t, rm.Target, size), before) {
				t.Error("block restore differs from the data at snapshot time")
			}
			c := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "raw-clone", Bytes: size, Block: true, FromVolume: v.GetVolumeId()}))
			cm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, c.GetVolumeId(), e.mnt, true, ""))
			want := append([]byte(nil), before...)
			copy(want[8*mib:], later)
			if !bytes.Equal(readDevice(t, cm.Target, size), want) {
				t.Error("block clone differs from its source")
			}
			for _, mm := range []*harness.Mounted{cm, rm, m} {
				if err := e.d.Unmount(e.ctx, mm); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range []string{c.GetVolumeId(), r.GetVolumeId(), v.GetVolumeId()} {
				if _, err := e.d.Controller().DeleteVolume(e.ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
					t.Fatal(err)
				}
			}
			e.noLeaks()
		})
	}
}

func writeDevice(t *testing.T, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readDevice(t *testing.T, dev string, n int64) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	return b
}
