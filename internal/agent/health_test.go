package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// TestVolumeHealthReported: the admin's case from the issue — a volume's
// files vanish from the data root while its PV is Bound. The node agent
// notices within a heartbeat: the Volume's Healthy condition and
// status.health say DataLoss with what to do, a warning event is
// recorded, and ControllerGetVolumeHealth (the remote backend) answers
// the same. The StorageNode reports the data root healthy.
func TestVolumeHealthReported(t *testing.T) {
	f := newFixture(t)
	vol, err := f.create("vanishing", 256*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	healthy := func(want bool, reason string) error {
		var v cairnv1.Volume
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: vol.ID}, &v); err != nil {
			return err
		}
		c := meta.FindStatusCondition(v.Status.Conditions, cairnv1.ConditionHealthy)
		if c == nil || (c.Status == "True") != want || (reason != "" && c.Reason != reason) {
			return fmt.Errorf("Healthy condition %+v, want %v %s", c, want, reason)
		}
		return nil
	}
	f.eventually(30*time.Second, func() error { return healthy(true, "") })
	if ps, err := f.remote.VolumeHealth(f.ctx, vol.ID); err != nil || len(ps) != 0 {
		t.Fatalf("controller health of a healthy volume: %+v %v", ps, err)
	}

	if err := os.RemoveAll(filepath.Join(f.fs.Mount, "volumes", vol.ID)); err != nil {
		t.Fatal(err)
	}
	f.eventually(30*time.Second, func() error { return healthy(false, "VolumeMissing") })
	ps, err := f.remote.VolumeHealth(f.ctx, vol.ID)
	if err != nil || len(ps) != 1 || ps[0].Kind != model.HealthDataLoss || !strings.Contains(ps[0].Message, "restore it from a snapshot or backup") {
		t.Fatalf("controller health of the vanished volume: %+v %v", ps, err)
	}
	f.eventually(10*time.Second, func() error {
		if ev := strings.Join(f.events(vol.ID), "\n"); !strings.Contains(ev, "VolumeUnhealthy") {
			return fmt.Errorf("no VolumeUnhealthy event: %s", ev)
		}
		return nil
	})
	if _, err := f.remote.VolumeHealth(f.ctx, model.VolumeIDForName("never-made")); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("health of an unknown volume: %v, want NotFound", err)
	}
	var sn cairnv1.StorageNode
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: testNode}, &sn); err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(sn.Status.Conditions, cairnv1.ConditionHealthy); c == nil || c.Status != "True" {
		t.Errorf("StorageNode Healthy condition %+v", c)
	}
	// A spec change (an expansion) never makes an empty volume in place
	// of the lost one.
	if _, err := f.remote.ExpandVolume(f.ctx, vol.ID, 512*mib, 0); !errors.Is(err, model.ErrFailedPrecondition) {
		t.Errorf("expanding the lost volume: %v, want FailedPrecondition", err)
	}
	if _, err := f.eng.GetVolume(f.ctx, vol.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("a volume was made in place of the lost one: %v", err)
	}
	// The CSI delete of the lost volume still works.
	if err := f.remote.DeleteVolume(f.ctx, vol.ID); err != nil {
		t.Fatal(err)
	}
	f.agentRunning()
}
