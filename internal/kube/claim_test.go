package kube

import (
	"reflect"
	"testing"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// TestClaimDropsWhatFailsTheCheck: a Snapshot's sourceClaim is input
// from a Kubernetes object; one that fails model.Claim.Check never
// reaches a manifest.
func TestClaimDropsWhatFailsTheCheck(t *testing.T) {
	good := &model.Claim{Name: "data", Namespace: "shop", StorageClassName: "cairn", AccessModes: []string{"ReadWriteOnce"}, VolumeMode: "Block", RequestBytes: 1 << 30}
	if got := Claim(ClaimObject(good)); !reflect.DeepEqual(got, good) {
		t.Errorf("round trip: %+v, want %+v", got, good)
	}
	for _, bad := range []*cairnv1.SourceClaim{
		{Name: "a\x1b[2J"}, {Name: "x", Namespace: "Not_A_Namespace"},
		{Name: "x", AccessModes: []string{"Whenever"}}, {Name: "x", VolumeMode: "Raw"}, {Name: "x", RequestBytes: -1},
	} {
		if got := Claim(bad); got != nil {
			t.Errorf("Claim(%+v) = %+v, want nil", bad, got)
		}
	}
	if Claim(nil) != nil || ClaimObject(nil) != nil {
		t.Error("nil claims should stay nil")
	}
}
