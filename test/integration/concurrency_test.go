package integration

import (
	"fmt"
	"sync"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// TestConcurrentCalls fires many CreateVolume, CreateSnapshot and
// DeleteVolume calls in parallel, several on the same names and IDs, and
// checks that every call got a sane answer and the end state is exactly
// what the calls imply.
func TestConcurrentCalls(t *testing.T) {
	e := newEnv(t, "xfs")
	const (
		names   = 8 // distinct volume names
		callers = 4 // goroutines per name
	)
	ids := make([]string, names)
	var idsMu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, names*callers*4)
	for i := 0; i < names; i++ {
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: fmt.Sprintf("pvc-%d", i), Bytes: 64 * mib})
				if err != nil {
					errs <- err
					return
				}
				idsMu.Lock()
				if ids[i] != "" && ids[i] != v.GetVolumeId() {
					errs <- fmt.Errorf("name pvc-%d got two IDs", i)
				}
				ids[i] = v.GetVolumeId()
				idsMu.Unlock()
				// Every caller snapshots under a shared and a private name.
				for _, sn := range []string{fmt.Sprintf("snap-%d", i), fmt.Sprintf("snap-%d-%d", i, c)} {
					s, err := e.d.Snapshot(e.ctx, sn, v.GetVolumeId())
					if err != nil {
						errs <- err
						continue
					}
					if s.GetSourceVolumeId() != v.GetVolumeId() || !s.GetReadyToUse() {
						errs <- fmt.Errorf("snapshot %s: source %s ready %v", sn, s.GetSourceVolumeId(), s.GetReadyToUse())
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	vols := must[*csipb.ListVolumesResponse](t)(e.d.Controller().ListVolumes(e.ctx, &csipb.ListVolumesRequest{}))
	if len(vols.GetEntries()) != names {
		t.Fatalf("%d volumes listed, want %d", len(vols.GetEntries()), names)
	}
	snaps := must[*csipb.ListSnapshotsResponse](t)(e.d.Controller().ListSnapshots(e.ctx, &csipb.ListSnapshotsRequest{}))
	if want := names * (1 + callers); len(snaps.GetEntries()) != want {
		t.Fatalf("%d snapshots listed, want %d", len(snaps.GetEntries()), want)
	}

	// Delete every volume from several goroutines at once, and restore
	// from the shared snapshots meanwhile.
	var wg2 sync.WaitGroup
	errs2 := make(chan error, names*callers*2)
	for i := 0; i < names; i++ {
		for c := 0; c < callers; c++ {
			wg2.Add(1)
			go func() {
				defer wg2.Done()
				if _, err := e.d.Controller().DeleteVolume(e.ctx, &csipb.DeleteVolumeRequest{VolumeId: ids[i]}); err != nil {
					errs2 <- err
				}
				_, err := e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: fmt.Sprintf("restore-%d", i), Bytes: 64 * mib, FromSnapshot: snapID(t, e, fmt.Sprintf("snap-%d", i), ids[i])})
				if err != nil && status.Code(err) != codes.AlreadyExists {
					errs2 <- err
				}
			}()
		}
	}
	wg2.Wait()
	close(errs2)
	for err := range errs2 {
		t.Error(err)
	}
	vols = must[*csipb.ListVolumesResponse](t)(e.d.Controller().ListVolumes(e.ctx, &csipb.ListVolumesRequest{}))
	if len(vols.GetEntries()) != names {
		t.Fatalf("%d volumes after deleting the originals and restoring, want %d restores", len(vols.GetEntries()), names)
	}
	for _, en := range vols.GetEntries() {
		if en.GetVolume().GetContentSource().GetSnapshot() == nil {
			t.Errorf("volume %s is not a restore", en.GetVolume().GetVolumeId())
		}
	}
	e.noLeaks()
}

// snapID returns the ID of the snapshot name of volumeID, through an
// idempotent CreateSnapshot.
func snapID(t *testing.T, e *env, name, volumeID string) string {
	s, err := e.d.Snapshot(e.ctx, name, volumeID) // idempotent: returns the existing one
	if err != nil {
		t.Error(err)
		return ""
	}
	return s.GetSnapshotId()
}
