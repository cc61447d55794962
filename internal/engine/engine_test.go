package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairn-csi/cairn/internal/model"
)

func TestOpenLayoutHealthMetrics(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		var rm rootMeta
		ok(t, readJSON(filepath.Join(e.root, rootMetaFile), &rm))
		if rm.FormatVersion != FormatVersion || rm.CreatedAt.IsZero() {
			t.Fatalf("root metadata %+v", rm)
		}
		for _, d := range []string{volumesDir, snapshotsDir, tmpDir, trashDir} {
			if st, err := os.Stat(filepath.Join(e.root, d)); err != nil || !st.IsDir() {
				t.Fatalf("layout directory %s: %v", d, err)
			}
		}
		ok(t, e.Health())
		assertNoLeftovers(t, e) // neither the reflink probe nor Health leave files

		// Reopening keeps the root's identity.
		e2 := reopen(t, e)
		var rm2 rootMeta
		ok(t, readJSON(filepath.Join(e2.root, rootMetaFile), &rm2))
		if !rm2.CreatedAt.Equal(rm.CreatedAt) {
			t.Fatalf("reopen rewrote the root metadata: %v, was %v", rm2.CreatedAt, rm.CreatedAt)
		}

		// Metrics report the clone mode and the capacity.
		reg := prometheus.NewRegistry()
		RegisterMetrics(reg, e)
		must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "m", RequiredBytes: 64 * mib}))(t)
		mfs := must(reg.Gather())(t)
		got := map[string]float64{}
		for _, mf := range mfs {
			got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
		}
		wantReflink := 0.0
		if e.reflink {
			wantReflink = 1
		}
		if got["cairn_reflink_enabled"] != wantReflink {
			t.Errorf("cairn_reflink_enabled = %v, want %v", got["cairn_reflink_enabled"], wantReflink)
		}
		if got["cairn_data_root_reserved_bytes"] != float64(64*mib) {
			t.Errorf("cairn_data_root_reserved_bytes = %v, want %d", got["cairn_data_root_reserved_bytes"], 64*mib)
		}
		// Each gauge reads statfs on its own, while the health collector's
		// writability probe may hold a block: allow 1 MiB between them.
		if f, a := got["cairn_data_root_free_bytes"], got["cairn_data_root_available_bytes"]; f <= 0 || math.Abs(a-(f-float64(64*mib))) > float64(mib) {
			t.Errorf("free %v, available %v: want available = free - 64MiB", f, a)
		}

		// A root written by a newer format is refused.
		ok(t, writeJSON(filepath.Join(e.root, rootMetaFile), &rootMeta{FormatVersion: FormatVersion + 1}))
		if _, err := Open(ctx, Config{DataRoot: e.Root()}); err == nil {
			t.Fatal("opened a data root with a newer format version")
		}
		ok(t, writeJSON(filepath.Join(e.root, rootMetaFile), &rm))
	})
	if _, err := Open(context.Background(), Config{}); err == nil {
		t.Fatal("opened an engine without a data root")
	}
	if _, err := Open(context.Background(), Config{DataRoot: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("opened a missing data root")
	}
}
