package remote

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

const gib = 1 << 30

func TestNodeStates(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	node := func(name string, age time.Duration, avail int64) cairnv1.StorageNode {
		n := cairnv1.StorageNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
		n.Status.AvailableBytes = avail
		if age >= 0 {
			n.Status.HeartbeatTime = metav1.NewTime(now.Add(-age))
		}
		return n
	}
	got := nodeStates([]cairnv1.StorageNode{node("fresh", time.Second, gib), node("silent", 3*time.Minute, gib), node("never", -1, gib)}, now, 0)
	if got["fresh"].why != "" || got["fresh"].available != gib {
		t.Errorf("fresh node: %+v", got["fresh"])
	}
	if !strings.Contains(got["silent"].why, "silent for 3m0s") || got["never"].why == "" {
		t.Errorf("silent nodes: %+v, %+v", got["silent"], got["never"])
	}
	if got := nodeStates([]cairnv1.StorageNode{node("n", 3*time.Minute, gib)}, now, 5*time.Minute); got["n"].why != "" {
		t.Errorf("a longer timeout keeps the node: %+v", got["n"])
	}
}

func TestPickNode(t *testing.T) {
	nodes := map[string]nodeState{
		"a": {name: "a", available: 10 * gib},
		"b": {name: "b", available: 50 * gib},
		"c": {name: "c", available: 50 * gib},
		"d": {name: "d", available: 100 * gib, why: "node agent silent for 5m0s"},
		"e": {name: "e", available: 1 * gib},
	}
	for _, c := range []struct {
		what    string
		where   model.Placement
		size    int64
		want    string   // "" : ResourceExhausted
		refuses []string // in the error
	}{
		{"most room, ties by name", model.Placement{}, gib, "b", nil},
		{"preferred first", model.Placement{Preferred: []string{"a"}}, gib, "a", nil},
		{"preferred without room", model.Placement{Preferred: []string{"e"}}, 2 * gib, "b", nil},
		{"requisite, most room", model.Placement{Requisite: []string{"a", "e", "c"}}, gib, "c", nil},
		{"requisite with preferred", model.Placement{Requisite: []string{"a", "c"}, Preferred: []string{"a"}}, gib, "a", nil},
		{"silent node skipped", model.Placement{Requisite: []string{"d", "a"}}, gib, "a", nil},
		{"too big", model.Placement{}, 60 * gib, "", []string{"a: 10737418240 bytes available", "d: node agent silent"}},
		{"unknown node", model.Placement{Requisite: []string{"z"}}, gib, "", []string{"z: no Cairn node agent"}},
	} {
		got, err := pickNode(nodes, c.where, c.size)
		if c.want != "" {
			if err != nil || got != c.want {
				t.Errorf("%s: %q, %v; want %q", c.what, got, err, c.want)
			}
			continue
		}
		if !errors.Is(err, model.ErrResourceExhausted) {
			t.Errorf("%s: %q, %v; want ResourceExhausted", c.what, got, err)
			continue
		}
		for _, r := range c.refuses {
			if !strings.Contains(err.Error(), r) {
				t.Errorf("%s: %v does not say %q", c.what, err, r)
			}
		}
	}
	if _, err := pickNode(map[string]nodeState{}, model.Placement{}, gib); err == nil || !strings.Contains(err.Error(), "no Cairn node is registered") {
		t.Errorf("no nodes: %v", err)
	}
}
