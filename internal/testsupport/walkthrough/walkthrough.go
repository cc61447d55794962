// Package walkthrough runs the mysql-pvc walkthrough of the design guide
// against a running Cairn driver through CSI, printing each step with its
// duration and checking the data at every step. The demo runs it, and so
// does a test.
package walkthrough

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

const (
	gib      = int64(1) << 30
	dataFile = "ibdata1"        // stands in for the database's data
	lateFile = "after-snapshot" // written after the snapshot
	dataSize = 64 << 20
)

// Steps reports progress.
type Steps struct {
	Out   io.Writer
	n     int
	start time.Time
}

// Do runs one step and prints its name, result and duration.
func (s *Steps) Do(name string, fn func() (string, error)) error {
	if s.start.IsZero() {
		s.start = time.Now()
	}
	s.n++
	t := time.Now()
	detail, err := fn()
	d := time.Since(t).Round(100 * time.Microsecond)
	if err != nil {
		fmt.Fprintf(s.Out, "[%2d] %-44s FAILED after %s: %v\n", s.n, name, d, err)
		return fmt.Errorf("step %q: %w", name, err)
	}
	fmt.Fprintf(s.Out, "[%2d] %-44s ok  %9s  %s\n", s.n, name, d, detail)
	return nil
}

// Run performs the walkthrough on d, mounting volumes under dir. It cleans
// up what it created, also on failure.
func Run(ctx context.Context, d *harness.Driver, dir string, out io.Writer) (err error) {
	s := &Steps{Out: out}
	var (
		mounts   = map[string]*harness.Mounted{}
		volumes  []string
		snapshot string
		payload  = make([]byte, dataSize)
		sum      [32]byte
	)
	if _, err := rand.Read(payload); err != nil {
		return err
	}
	sum = sha256.Sum256(payload)
	defer func() {
		cerr := s.Do("clean up (unmount, delete, check leaks)", func() (string, error) {
			var errs []error
			for _, m := range mounts {
				errs = append(errs, d.Unmount(ctx, m))
			}
			for _, id := range volumes {
				_, e := d.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
				errs = append(errs, e)
			}
			if snapshot != "" {
				_, e := d.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: snapshot})
				errs = append(errs, e)
			}
			leaks, e := harness.Leaks(d.DataRoot, dir)
			errs = append(errs, e)
			for _, l := range leaks {
				errs = append(errs, fmt.Errorf("left behind: %s", l))
			}
			return fmt.Sprintf("%d volumes, 1 snapshot deleted; no loop devices or mounts left", len(volumes)), errors.Join(errs...)
		})
		if err == nil {
			err = cerr
		}
		if err == nil {
			fmt.Fprintf(out, "walkthrough passed in %s\n", time.Since(s.start).Round(time.Millisecond))
		}
	}()

	create := func(spec harness.VolumeSpec) (*csipb.Volume, error) {
		v, err := d.CreateVolume(ctx, spec)
		if err == nil {
			volumes = append(volumes, v.GetVolumeId())
		}
		return v, err
	}
	mount := func(id string) (*harness.Mounted, error) {
		m, err := d.Mount(ctx, id, dir, false, "")
		if err == nil {
			mounts[id] = m
		}
		return m, err
	}
	unmount := func(id string) error {
		err := d.Unmount(ctx, mounts[id])
		if err == nil {
			delete(mounts, id)
		}
		return err
	}

	var pvc, restore, clone *csipb.Volume
	if err := s.Do("create mysql-pvc (1Gi, ext4)", func() (string, error) {
		var err error
		pvc, err = create(harness.VolumeSpec{Name: "mysql-pvc", Bytes: gib})
		return fmt.Sprintf("volume %s, %s", pvc.GetVolumeId(), human(pvc.GetCapacityBytes())), err
	}); err != nil {
		return err
	}
	if err := s.Do("mount mysql-pvc (stage + publish)", func() (string, error) {
		m, err := mount(pvc.GetVolumeId())
		if err != nil {
			return "", err
		}
		return "at " + m.Target, nil
	}); err != nil {
		return err
	}
	if err := s.Do("write data into mysql-pvc", func() (string, error) {
		return fmt.Sprintf("%s, sha256 %x…", human(dataSize), sum[:6]), writeSynced(filepath.Join(mounts[pvc.GetVolumeId()].Target, dataFile), payload)
	}); err != nil {
		return err
	}
	if err := s.Do("snapshot mysql-snapshot-demo", func() (string, error) {
		snap, err := d.Snapshot(ctx, "mysql-snapshot-demo", pvc.GetVolumeId())
		if err != nil {
			return "", err
		}
		snapshot = snap.GetSnapshotId()
		if !snap.GetReadyToUse() || snap.GetSizeBytes() != pvc.GetCapacityBytes() {
			return "", fmt.Errorf("snapshot readyToUse=%v restoreSize=%d, want true and %d", snap.GetReadyToUse(), snap.GetSizeBytes(), pvc.GetCapacityBytes())
		}
		return fmt.Sprintf("%s readyToUse, restoreSize %s", snapshot, human(snap.GetSizeBytes())), nil
	}); err != nil {
		return err
	}
	if err := s.Do("write more data after the snapshot", func() (string, error) {
		return lateFile, writeSynced(filepath.Join(mounts[pvc.GetVolumeId()].Target, lateFile), []byte("written after the snapshot\n"))
	}); err != nil {
		return err
	}
	if err := s.Do("restore mysql-restore-pvc from the snapshot", func() (string, error) {
		var err error
		restore, err = create(harness.VolumeSpec{Name: "mysql-restore-pvc", Bytes: gib, FromSnapshot: snapshot})
		return "volume " + restore.GetVolumeId(), err
	}); err != nil {
		return err
	}
	if err := s.Do("mount mysql-restore-pvc and check data", func() (string, error) {
		m, err := mount(restore.GetVolumeId())
		if err != nil {
			return "", err
		}
		if err := checkFile(filepath.Join(m.Target, dataFile), sum); err != nil {
			return "", err
		}
		if _, err := os.Stat(filepath.Join(m.Target, lateFile)); !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s written after the snapshot is present in the restore (%v)", lateFile, err)
		}
		return "data identical; later write absent", nil
	}); err != nil {
		return err
	}
	if err := s.Do("clone mysql-clone-pvc from mysql-pvc", func() (string, error) {
		var err error
		clone, err = create(harness.VolumeSpec{Name: "mysql-clone-pvc", Bytes: gib, FromVolume: pvc.GetVolumeId()})
		return "volume " + clone.GetVolumeId() + " (source mounted: frozen for the reflink)", err
	}); err != nil {
		return err
	}
	if err := s.Do("mount mysql-clone-pvc and check data", func() (string, error) {
		m, err := mount(clone.GetVolumeId())
		if err != nil {
			return "", err
		}
		if err := checkFile(filepath.Join(m.Target, dataFile), sum); err != nil {
			return "", err
		}
		if _, err := os.Stat(filepath.Join(m.Target, lateFile)); err != nil {
			return "", fmt.Errorf("clone lacks %s: %v", lateFile, err)
		}
		return "data identical, including the later write", unmount(clone.GetVolumeId())
	}); err != nil {
		return err
	}
	if err := s.Do("expand detached mysql-clone-pvc to 2Gi", func() (string, error) {
		size, err := d.Expand(ctx, clone.GetVolumeId(), 2*gib, "")
		if err != nil {
			return "", err
		}
		if size < 2*gib {
			return "", fmt.Errorf("capacity %d after expansion, want ≥ %d", size, 2*gib)
		}
		return "capacity " + human(size), nil
	}); err != nil {
		return err
	}
	if err := s.Do("mount expanded clone: larger fs, same data", func() (string, error) {
		m, err := mount(clone.GetVolumeId())
		if err != nil {
			return "", err
		}
		var st unix.Statfs_t
		if err := unix.Statfs(m.Target, &st); err != nil {
			return "", err
		}
		fsBytes := int64(st.Blocks) * st.Bsize
		if fsBytes < 2*gib*9/10 {
			return "", fmt.Errorf("file system is %s, want about 2Gi", human(fsBytes))
		}
		if err := checkFile(filepath.Join(m.Target, dataFile), sum); err != nil {
			return "", err
		}
		return "file system " + human(fsBytes) + ", data identical", nil
	}); err != nil {
		return err
	}
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func checkFile(path string, want [32]byte) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if got := sha256.Sum256(b); !bytes.Equal(got[:], want[:]) {
		return fmt.Errorf("%s differs: sha256 %x, want %x", path, got[:6], want[:6])
	}
	return nil
}

func human(b int64) string {
	switch {
	case b >= gib && b%gib == 0:
		return fmt.Sprintf("%dGi", b/gib)
	case b >= gib:
		return fmt.Sprintf("%.2fGi", float64(b)/float64(gib))
	default:
		return fmt.Sprintf("%dMi", b>>20)
	}
}
