package model

import (
	"strings"
	"testing"
)

func TestIOLimitsWith(t *testing.T) {
	base := IOLimits{IOPS: 100, ThroughputMiBps: 20}
	got, err := base.With(map[string]string{"iops": "500"}, "mutable_parameters", true)
	if err != nil || got != (IOLimits{IOPS: 500, ThroughputMiBps: 20}) {
		t.Fatalf("absent key must keep its limit: %+v %v", got, err)
	}
	if got, err = base.With(map[string]string{"iops": "0", "throughput": " 0 "}, "mutable_parameters", true); err != nil || !got.Zero() {
		t.Fatalf("0 removes a limit: %+v %v", got, err)
	}
	if got, err = base.With(map[string]string{"fsType": "xfs", "throughput": "7"}, "parameters", false); err != nil || got.ThroughputMiBps != 7 {
		t.Fatalf("lenient: %+v %v", got, err)
	}
	for _, bad := range []map[string]string{
		{"iops": "-1"}, {"iops": "ten"}, {"iops": "10000001"}, {"throughput": "1000001"}, {"throughput": "1.5"},
		{"xxInvalidParameterKey": "xxInvalidParameterValue"}, {"iops": ""},
	} {
		_, err := base.With(bad, "mutable_parameters", true)
		if KindOf(err) != ErrInvalidArgument || !strings.Contains(err.Error(), "mutable_parameters") {
			t.Errorf("%v: %v, want InvalidArgument naming the field", bad, err)
		}
	}
	if !ValidPodUID("0b8f7f52-2a5c-4c39-9f5e-3a0d61b8f1e2") || ValidPodUID("../../x") || ValidPodUID("") {
		t.Error("ValidPodUID")
	}
}
