package model

import (
	"strings"
	"testing"
)

func TestClaimCheck(t *testing.T) {
	good := Claim{Name: "mysql-pvc", Namespace: "shop", StorageClassName: "cairn", AccessModes: []string{"ReadWriteOnce"}, VolumeMode: "Block", RequestBytes: 1 << 30}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Claim{
		{Name: "Mysql"}, {Name: "a\x1b[2Jb"}, {Name: strings.Repeat("a", 254)},
		{Namespace: "a.b"}, {StorageClassName: "a b"},
		{AccessModes: []string{"ReadWriteOnce", "ReadWriteOnce", "ReadWriteOnce", "ReadWriteOnce", "ReadWriteOnce"}},
		{AccessModes: []string{"Sometimes"}}, {VolumeMode: "Raw"}, {RequestBytes: -1},
	} {
		if err := bad.Check(); err == nil || !strings.Contains(err.Error(), "claim.") {
			t.Errorf("Check(%+v) = %v, want an error naming the field", bad, err)
		}
	}
	if c := ClaimFromParameters(map[string]string{ParamPVCName: "data", ParamPVCNamespace: "shop"}, true); c == nil || c.Name != "data" || c.VolumeMode != "Block" {
		t.Errorf("ClaimFromParameters = %+v", c)
	}
	if c := ClaimFromParameters(map[string]string{}, false); c != nil {
		t.Errorf("ClaimFromParameters without a PVC = %+v, want nil", c)
	}
	if c := ClaimFromParameters(map[string]string{ParamPVCName: "BAD NAME"}, false); c != nil {
		t.Errorf("ClaimFromParameters with a bad name = %+v, want nil", c)
	}
}
