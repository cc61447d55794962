package fsops

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestChangedTable(t *testing.T) {
	x := func(log, phys, n int64, flags uint32) Extent {
		return Extent{Logical: log, Physical: phys, Length: n, Flags: flags}
	}
	cases := []struct {
		name string
		a, b []Extent
		size int64
		want []Range
	}{
		{"both holes", nil, nil, 100, nil},
		{"same extent", []Extent{x(0, 1000, 50, 0)}, []Extent{x(0, 1000, 50, 0)}, 100, nil},
		// The same physical run split differently on each side.
		{"split alike", []Extent{x(0, 1000, 20, 0), x(20, 1020, 30, 0)}, []Extent{x(0, 1000, 50, 0)}, 100, nil},
		{"hole against data", nil, []Extent{x(10, 1000, 20, 0)}, 100, []Range{{10, 20}}},
		{"data against hole", []Extent{x(10, 1000, 20, 0)}, nil, 100, []Range{{10, 20}}},
		{"rewritten middle", []Extent{x(0, 1000, 30, 0)}, []Extent{x(0, 1000, 10, 0), x(10, 5000, 10, 0), x(20, 1020, 10, 0)}, 100, []Range{{10, 10}}},
		{"shifted physical", []Extent{x(0, 1000, 30, 0)}, []Extent{x(0, 1001, 30, 0)}, 100, []Range{{0, 30}}},
		{"adjacent merge", []Extent{x(0, 1000, 10, 0)}, []Extent{x(0, 2000, 5, 0), x(5, 3000, 5, 0), x(10, 4000, 10, 0)}, 100, []Range{{0, 20}}},
		{"delalloc differs", []Extent{x(0, 0, 10, FiemapExtentDelalloc)}, []Extent{x(0, 0, 10, FiemapExtentDelalloc)}, 100, []Range{{0, 10}}},
		{"unknown differs", []Extent{x(0, 1000, 10, FiemapExtentUnknown)}, []Extent{x(0, 1000, 10, 0)}, 100, []Range{{0, 10}}},
		{"unwritten is a hole", []Extent{x(0, 1000, 10, FiemapExtentUnwritten)}, nil, 100, nil},
		{"clipped to size", nil, []Extent{x(90, 1000, 50, 0)}, 100, []Range{{90, 10}}},
		{"beyond size ignored", nil, []Extent{x(100, 1000, 50, FiemapExtentLast)}, 100, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Changed(tc.a, tc.b, tc.size); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Changed = %v, want %v", got, tc.want)
			}
			// Symmetric.
			if got := Changed(tc.b, tc.a, tc.size); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Changed (swapped) = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAllocatedTable(t *testing.T) {
	exts := []Extent{
		{Logical: 0, Physical: 100, Length: 10},
		{Logical: 10, Physical: 900, Length: 10},
		{Logical: 30, Physical: 50, Length: 10, Flags: FiemapExtentUnwritten},
		{Logical: 50, Physical: 0, Length: 10, Flags: FiemapExtentDelalloc},
		{Logical: 95, Physical: 70, Length: 10, Flags: FiemapExtentLast},
	}
	want := []Range{{0, 20}, {50, 10}, {95, 5}}
	if got := Allocated(exts, 100); !reflect.DeepEqual(got, want) {
		t.Fatalf("Allocated = %v, want %v", got, want)
	}
}

// TestChangedReflinks checks Changed against a real file system: a
// reflinked copy differs from its source exactly where it was written
// afterwards, rounded to the file system block.
func TestChangedReflinks(t *testing.T) {
	mnt := scratch(t, "xfs")
	base := filepath.Join(mnt, "base")
	size := 256 * mib
	sparseFile(t, base, size, []region{{0, 8 * mib}, {100 * mib, 16 * mib}})
	snap1 := filepath.Join(mnt, "snap1")
	if err := Reflink(base, snap1); err != nil {
		t.Fatal(err)
	}
	// Writes after the snapshot: inside existing data, into a hole,
	// unaligned (rounded out to 4 KiB blocks), and one past the old data.
	f, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	writes := []region{{mib, 64 << 10}, {50 * mib, 2 * mib}, {101*mib + 100, 10}, {200 * mib, 4096}}
	for i, w := range writes {
		if _, err := f.WriteAt(pattern(uint64(50+i), w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	snap2 := filepath.Join(mnt, "snap2")
	if err := Reflink(base, snap2); err != nil {
		t.Fatal(err)
	}
	e1, e2 := extentsOf(t, snap1), extentsOf(t, snap2)
	want := []Range{{mib, 64 << 10}, {50 * mib, 2 * mib}, {101 * mib, 4096}, {200 * mib, 4096}}
	if got := Changed(e1, e2, size); !reflect.DeepEqual(got, want) {
		t.Fatalf("Changed(snap1, snap2) = %v, want %v", got, want)
	}
	if got := Changed(e2, extentsOf(t, base), size); got != nil {
		t.Fatalf("Changed(snap2, base) = %v, want none", got)
	}
	wantAlloc := []Range{{0, 8 * mib}, {50 * mib, 2 * mib}, {100 * mib, 16 * mib}, {200 * mib, 4096}}
	if got := Allocated(e2, size); !reflect.DeepEqual(got, wantAlloc) {
		t.Fatalf("Allocated(snap2) = %v, want %v", got, wantAlloc)
	}
}

func extentsOf(t *testing.T, path string) []Extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exts, err := Extents(f)
	if err != nil {
		t.Fatal(err)
	}
	return exts
}
