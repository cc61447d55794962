package agent

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// A Volume's status reports the bytes its file occupies. A backup
// Snapshot's verify-request annotation makes its agent read the
// backup back: Verified while the target is intact, Damaged naming the
// pack once a byte of it is flipped, Damaged when its manifest is gone,
// Failed for a value that is too long; the same value again changes
// nothing.
func TestVerifyBackupThroughObjects(t *testing.T) {
	f := newFixture(t)
	target := f.fileTarget()
	v, err := f.create("data", 64*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8*mib)
	rand.Read(data)
	file, err := os.OpenFile(filepath.Join(f.eng.Root(), "volumes", v.ID, "data.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := file.WriteAt(data, 16*mib); err != nil {
		t.Fatal(err)
	}
	file.Close()
	// The heartbeat reports what the volume now occupies.
	f.eventually(30*time.Second, func() error {
		var o cairnv1.Volume
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: v.ID}, &o); err != nil {
			return err
		}
		if o.Status.AllocatedBytes < int64(len(data)) {
			return fmt.Errorf("allocatedBytes %d, want at least the %d written", o.Status.AllocatedBytes, len(data))
		}
		return nil
	})
	var info *model.BackupInfo
	f.eventually(time.Minute, func() error {
		if info, err = f.remote.CreateBackup(f.ctx, "bk-verify", v.ID, "default"); err == nil && !info.Ready {
			err = errors.New("backup not ready")
		}
		return err
	})
	name := kube.SnapshotObjectName(info.Handle.String())

	ask := func(value string) {
		t.Helper()
		var s cairnv1.Snapshot
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, &s); err != nil {
			t.Fatal(err)
		}
		orig := s.DeepCopy()
		metav1.SetMetaDataAnnotation(&s.ObjectMeta, cairnv1.VerifyRequestAnnotation, value)
		if err := f.cl.Patch(f.ctx, &s, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
	}
	answer := func(request, phase string) *cairnv1.Verification {
		t.Helper()
		var got *cairnv1.Verification
		f.eventually(time.Minute, func() error {
			var s cairnv1.Snapshot
			if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, &s); err != nil {
				return err
			}
			got = s.Status.Verification
			if got == nil || got.Request != request || got.Phase == cairnv1.VerifyRunning {
				return fmt.Errorf("verification %+v, want request %q answered", got, request)
			}
			return nil
		})
		if got.Phase != phase || got.StartTime == nil || got.CompletionTime == nil {
			t.Fatalf("verification of %q: %+v, want phase %s with its times", request, got, phase)
		}
		return got
	}

	ask("one")
	ok := answer("one", cairnv1.VerifyOK)
	if ok.Blocks == 0 || ok.Bytes < int64(len(data)) || ok.BytesDone != ok.Bytes {
		t.Errorf("verified %+v: want the %d bytes written counted", ok, len(data))
	}
	f.eventually(30*time.Second, func() error {
		for _, e := range f.events(name) {
			if strings.HasPrefix(e, "Verified: ") {
				return nil
			}
		}
		return fmt.Errorf("no Verified event: %v", f.events(name))
	})

	// The same value again: nothing runs, the status stays as it was.
	ask("one")
	time.Sleep(time.Second)
	var s cairnv1.Snapshot
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	if !s.Status.Verification.CompletionTime.Equal(ok.CompletionTime) {
		t.Errorf("answered again: %+v, was %+v", s.Status.Verification, ok)
	}

	// Flip a byte in the middle of every pack of the target.
	packs := 0
	if err := filepath.WalkDir(filepath.Join(target, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b[len(b)/2] ^= 0xff
		packs++
		return os.WriteFile(p, b, 0o644)
	}); err != nil || packs == 0 {
		t.Fatalf("corrupting %d packs: %v", packs, err)
	}
	ask("two")
	bad := answer("two", cairnv1.VerifyDamaged)
	if !strings.Contains(bad.Message, "pack") || !strings.Contains(bad.Message, "problems") {
		t.Errorf("damaged verification's message %q names no pack", bad.Message)
	}

	// The manifest gone from the target: the backup is lost, Damaged.
	h := info.Handle
	if err := os.Remove(filepath.Join(target, "backups", h.VolumeID, h.BackupID+".json")); err != nil {
		t.Fatal(err)
	}
	ask("three")
	if gone := answer("three", cairnv1.VerifyDamaged); !strings.Contains(gone.Message, "manifest is missing") {
		t.Errorf("verification of a backup whose manifest is gone: %q", gone.Message)
	}

	// Too long a value (of multi-byte characters: what the status keeps
	// must be cut on a character boundary, or it never matches again and
	// the agent rewrites the status forever).
	long := strings.Repeat("é", cairnv1.MaxVerifyValue)
	ask(long)
	failed := answer(clipRequest(long), cairnv1.VerifyFailed)
	if !strings.Contains(failed.Message, cairnv1.VerifyRequestAnnotation) {
		t.Errorf("too long a value: %q does not name the annotation", failed.Message)
	}
	time.Sleep(2 * time.Second)
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	if !s.Status.Verification.CompletionTime.Equal(failed.CompletionTime) {
		t.Errorf("the refusal was written again: %+v, was %+v", s.Status.Verification, failed)
	}
}
