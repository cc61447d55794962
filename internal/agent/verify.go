package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// verifies holds the backup verifications running in the background, by
// Snapshot object name (docs/FORMAT.md: verifying one backup).
type verifies struct {
	mu   sync.Mutex
	runs map[string]*verifyRun
	ctx  context.Context // the agent's: cancelled when it stops
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// verifyRun is one verification of one backup.
type verifyRun struct {
	request, handle string
	start           time.Time
	cancel          context.CancelFunc
	done, total     atomic.Int64
	finished        chan struct{}
	res             *model.VerifyResult
	err             error
}

// maxProblemsShown bounds a Damaged verification's message.
const maxProblemsShown = 3

// clipRequest is the part of a verify-request value a status records.
func clipRequest(v string) string {
	if len(v) > cairnv1.MaxVerifyValue {
		return v[:cairnv1.MaxVerifyValue]
	}
	return v
}

// reconcileVerify answers a ready backup Snapshot's verify-request
// annotation: it starts the verification in the background, reports its
// progress, and its outcome once finished.
func (a *Agent) reconcileVerify(ctx context.Context, s *cairnv1.Snapshot) (reconcile.Result, error) {
	want := s.Annotations[cairnv1.VerifyRequestAnnotation]
	cur := s.Status.Verification
	if want == "" || s.Spec.Type == cairnv1.SnapshotLocal || !s.Status.ReadyToUse ||
		cur != nil && cur.Request == clipRequest(want) && cur.Phase != cairnv1.VerifyRunning {
		return reconcile.Result{}, nil
	}
	orig := s.DeepCopy()
	now := metav1.Now()
	v := &cairnv1.Verification{Request: clipRequest(want), Phase: cairnv1.VerifyRunning}
	var run *verifyRun
	if len(want) > cairnv1.MaxVerifyValue {
		v.Phase, v.StartTime, v.CompletionTime = cairnv1.VerifyFailed, &now, &now
		v.Message = fmt.Sprintf("annotation %s: the value has %d characters, at most %d are allowed", cairnv1.VerifyRequestAnnotation, len(want), cairnv1.MaxVerifyValue)
	} else {
		run = a.startVerify(s.Name, want, s.Status.SnapshotID)
		v.StartTime = &metav1.Time{Time: run.start}
		select {
		case <-run.finished:
			v.CompletionTime = &now
			finishVerification(v, run)
		default:
			v.BytesDone, v.Bytes = run.done.Load(), run.total.Load()
		}
	}
	s.Status.Verification = v
	if err := a.client.Status().Patch(ctx, s, client.MergeFrom(orig)); err != nil {
		return reconcile.Result{}, err
	}
	if v.Phase == cairnv1.VerifyRunning {
		return reconcile.Result{RequeueAfter: a.Progress}, nil
	}
	if run != nil {
		a.forgetVerify(s.Name, run)
	}
	klog.FromContext(ctx).Info("Backup verified", "snapshot", s.Name, "handle", s.Status.SnapshotID, "phase", v.Phase, "blocks", v.Blocks, "bytes", v.Bytes)
	switch v.Phase {
	case cairnv1.VerifyOK:
		a.event(s, s.Spec.Parameters, false, "Verified", "Backup %s verified: %d blocks, %d bytes read back and checked", s.Status.SnapshotID, v.Blocks, v.Bytes)
	case cairnv1.VerifyDamaged:
		a.event(s, s.Spec.Parameters, true, "BackupDamaged", "Backup %s is damaged: %s", s.Status.SnapshotID, v.Message)
	default:
		a.event(s, s.Spec.Parameters, true, "VerifyFailed", "Backup %s could not be verified: %s", s.Status.SnapshotID, v.Message)
	}
	return reconcile.Result{}, nil
}

// finishVerification fills v from a finished run.
func finishVerification(v *cairnv1.Verification, run *verifyRun) {
	if run.err != nil {
		v.Phase, v.Message = cairnv1.VerifyFailed, run.err.Error()
		return
	}
	r := run.res
	v.Blocks, v.Bytes, v.BytesDone = int64(r.Blocks), r.Bytes, r.Bytes
	if len(r.Problems) == 0 {
		v.Phase, v.Message = cairnv1.VerifyOK, fmt.Sprintf("%d blocks read back and checked", r.Blocks)
		return
	}
	shown := r.Problems[:min(len(r.Problems), maxProblemsShown)]
	v.Phase = cairnv1.VerifyDamaged
	v.Message = fmt.Sprintf("%d problems: %s", len(r.Problems), strings.Join(shown, "; "))
	if len(r.Problems) > len(shown) {
		v.Message += "; ..."
	}
}

// startVerify returns the run answering request for the Snapshot name,
// starting it unless it runs; a run for another request is stopped.
func (a *Agent) startVerify(name, request, handle string) *verifyRun {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if run := vs.runs[name]; run != nil {
		if run.request == request && run.handle == handle {
			return run
		}
		run.cancel()
	}
	ctx, cancel := context.WithCancel(vs.ctx)
	run := &verifyRun{request: request, handle: handle, start: time.Now(), cancel: cancel, finished: make(chan struct{})}
	vs.runs[name] = run
	vs.wg.Add(1)
	go func() {
		defer vs.wg.Done()
		defer cancel()
		run.res, run.err = a.Engine.VerifyBackup(ctx, handle, func(done, total int64) {
			run.done.Store(done)
			run.total.Store(total)
		})
		close(run.finished)
	}()
	return run
}

// forgetVerify drops a finished run once its outcome is recorded.
func (a *Agent) forgetVerify(name string, run *verifyRun) {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if vs.runs[name] == run {
		delete(vs.runs, name)
	}
}

// stopVerify stops a Snapshot's verification (the Snapshot is going).
func (a *Agent) stopVerify(name string) {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if run := vs.runs[name]; run != nil {
		run.cancel()
		delete(vs.runs, name)
	}
}
