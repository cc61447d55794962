package csi

import (
	"context"
	"slices"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// The health RPCs validate, map each problem kind to CSI's types, answer
// no entries when healthy, and pass NotFound on.
func TestHealthHandlers(t *testing.T) {
	ctx := context.Background()
	b := &recordingNode{}
	n := &nodeServer{s: New(b, nil, Options{NodeID: "node-a"})}
	for _, req := range []*csipb.NodeGetVolumeHealthRequest{
		{},
		{VolumeId: "v-1", VolumePublishPath: "relative/path"},
		{VolumeId: "v-1", StagingTargetPath: "/a/../b"},
	} {
		_, err := n.NodeGetVolumeHealth(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "_") {
			t.Errorf("%v: %v, want InvalidArgument naming the field", req, err)
		}
	}
	if b.calls != 0 {
		t.Fatalf("invalid requests reached the backend %d times", b.calls)
	}
	resp, err := n.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v-1", StagingTargetPath: "/var/lib/kubelet/x"})
	if err != nil || resp.GetVolumeHealth().GetVolumeId() != "v-1" || len(resp.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("healthy volume: %v %v", resp, err)
	}
	b.health = []model.HealthProblem{
		{Kind: model.HealthDegraded, Reason: "FileSystemReadOnly", Message: "ro"},
		{Kind: model.HealthInaccessible, Reason: "LoopDeviceDetached", Message: "gone"},
		{Kind: model.HealthDataLoss, Reason: "DataFileMissing", Message: "lost"},
	}
	resp, err = n.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []csipb.VolumeHealthErrorType{csipb.VolumeHealthErrorType_DEGRADED, csipb.VolumeHealthErrorType_INACCESSIBLE, csipb.VolumeHealthErrorType_DATA_LOSS}
	got := resp.GetVolumeHealth().GetHealthStatuses()
	if len(got) != len(want) {
		t.Fatalf("statuses %v", got)
	}
	for i, e := range got {
		if e.GetStatus() != want[i] || e.GetReason() != b.health[i].Reason || e.GetMessage() != b.health[i].Message {
			t.Errorf("entry %d: %v, want %v %+v", i, e, want[i], b.health[i])
		}
	}
	sh, err := n.NodeGetStorageHealth(ctx, &csipb.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.GetBackendHealth()) != 3 || sh.GetBackendHealth()[0].GetStatus() != csipb.StorageHealthErrorType_STORAGE_DEGRADED ||
		sh.GetBackendHealth()[1].GetStatus() != csipb.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Errorf("storage health: %v %v", sh, err)
	}
	b.err = model.Errorf(model.ErrNotFound, "volume v-1 not found")
	if _, err := n.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v-1"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown volume: %v, want NotFound", err)
	}
	caps, _ := n.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	var have []csipb.NodeServiceCapability_RPC_Type
	for _, c := range caps.GetCapabilities() {
		have = append(have, c.GetRpc().GetType())
	}
	for _, w := range []csipb.NodeServiceCapability_RPC_Type{csipb.NodeServiceCapability_RPC_GET_VOLUME_HEALTH, csipb.NodeServiceCapability_RPC_GET_STORAGE_HEALTH} {
		if !slices.Contains(have, w) {
			t.Errorf("node capabilities %v lack %v", have, w)
		}
	}

	c := &controllerServer{s: New(nil, fakeBackend{t: t}, Options{})}
	if _, err := c.ControllerGetVolumeHealth(ctx, &csipb.ControllerGetVolumeHealthRequest{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "volume_id") {
		t.Errorf("controller health without volume_id: %v", err)
	}
	if _, err := c.ControllerGetVolumeHealth(ctx, &csipb.ControllerGetVolumeHealthRequest{VolumeId: "v-x"}); status.Code(err) != codes.NotFound {
		t.Errorf("controller health of an unknown volume: %v, want NotFound", err)
	}
}
