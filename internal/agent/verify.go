package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// verifies holds the backup verifications of this node, by Snapshot
// object name (docs/FORMAT.md: verifying one backup). A run stays until
// the status records a newer request, the annotation goes or the Snapshot
// goes, so a reconcile that reads a stale cached object finds the same
// outcome instead of starting the work again.
type verifies struct {
	mu    sync.Mutex
	runs  map[string]*verifyRun
	ctx   context.Context // the agent's: cancelled when it stops
	stop  context.CancelFunc
	wg    sync.WaitGroup
	slots chan struct{} // verifications reading at once on this node
}

// verifyRun is one verification of one backup.
type verifyRun struct {
	request, handle string
	start           time.Time
	cancel          context.CancelFunc
	done, total     atomic.Int64
	queued          atomic.Bool // waiting for a slot
	finished        chan struct{}
	end             time.Time // set before finished is closed
	res             *model.VerifyResult
	err             error
	reported        bool // guarded by verifies.mu: the outcome's event went out
}

const (
	// maxProblemsShown bounds a Damaged verification's message.
	maxProblemsShown = 3
	// verifySlots is how many verifications read at once on one node
	// (each holds about 64 MiB of buffers and reads 8 blocks in parallel).
	verifySlots = 1
)

// clipRequest is the part of a verify-request value a status records: at
// most MaxVerifyValue bytes, cut on a character boundary.
func clipRequest(v string) string {
	if len(v) <= cairnv1.MaxVerifyValue {
		return v
	}
	v = v[:cairnv1.MaxVerifyValue]
	for len(v) > 0 && !utf8.ValidString(v) {
		v = v[:len(v)-1]
	}
	return v
}

// reconcileVerify answers a ready backup Snapshot's verify-request
// annotation: it starts the verification in the background, reports its
// progress (at most once per a.Progress), and its outcome once finished.
func (a *Agent) reconcileVerify(ctx context.Context, s *cairnv1.Snapshot) (reconcile.Result, error) {
	want := s.Annotations[cairnv1.VerifyRequestAnnotation]
	cur := s.Status.Verification
	if s.Spec.Type == cairnv1.SnapshotLocal || !s.Status.ReadyToUse {
		return reconcile.Result{}, nil
	}
	if want == "" {
		a.stopVerify(s.Name)
		if cur == nil || cur.Phase != cairnv1.VerifyRunning {
			return reconcile.Result{}, nil
		}
		// The request was withdrawn while it ran.
		orig := s.DeepCopy()
		now := metav1.Now()
		s.Status.Verification.Phase, s.Status.Verification.CompletionTime = cairnv1.VerifyFailed, &now
		s.Status.Verification.Message = "stopped: the " + cairnv1.VerifyRequestAnnotation + " annotation was removed"
		return reconcile.Result{}, a.client.Status().Patch(ctx, s, client.MergeFrom(orig))
	}
	if cur != nil && cur.Request == clipRequest(want) && cur.Phase != cairnv1.VerifyRunning {
		a.forgetVerify(s.Name, cur.Request) // answered: the run's outcome is recorded
		return reconcile.Result{}, nil
	}
	orig := s.DeepCopy()
	v := &cairnv1.Verification{Request: clipRequest(want), Phase: cairnv1.VerifyRunning}
	var run *verifyRun
	if len(want) > cairnv1.MaxVerifyValue {
		now := metav1.Now()
		v.Phase, v.StartTime, v.CompletionTime = cairnv1.VerifyFailed, &now, &now
		v.Message = fmt.Sprintf("annotation %s: the value has %d bytes, at most %d are allowed", cairnv1.VerifyRequestAnnotation, len(want), cairnv1.MaxVerifyValue)
	} else {
		h, err := model.ParseBackupHandle(s.Status.SnapshotID)
		if err != nil {
			return reconcile.Result{}, nil // not a backup this agent made or imported
		}
		// After a restart the target may not be configured yet.
		if err := a.ensureTarget(ctx, h.Target); err != nil {
			return a.retryAfter(err)
		}
		run = a.startVerify(s.Name, want, s.Status.SnapshotID)
		v.StartTime = &metav1.Time{Time: run.start}
		select {
		case <-run.finished:
			v.CompletionTime = &metav1.Time{Time: run.end}
			finishVerification(v, run)
		default:
			if wait := a.progressDue("verify/" + s.Name); wait > 0 && cur != nil && cur.Request == v.Request {
				return reconcile.Result{RequeueAfter: wait}, nil // progress written lately
			}
			v.BytesDone, v.Bytes = run.done.Load(), run.total.Load()
			if run.queued.Load() {
				v.Message = "queued: another verification is reading on this node"
			}
		}
	}
	s.Status.Verification = v
	if err := a.client.Status().Patch(ctx, s, client.MergeFrom(orig)); err != nil {
		return reconcile.Result{}, err
	}
	if v.Phase == cairnv1.VerifyRunning {
		return reconcile.Result{RequeueAfter: a.Progress}, nil
	}
	if run != nil && !a.firstReport(run) {
		return reconcile.Result{}, nil
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

// finishVerification fills v from a finished run. A backup whose manifest
// the target no longer holds is damaged (its Snapshot says it is ready).
func finishVerification(v *cairnv1.Verification, run *verifyRun) {
	switch {
	case model.KindOf(run.err) == model.ErrNotFound:
		v.Phase, v.Message = cairnv1.VerifyDamaged, "the backup's manifest is missing from the target: "+run.err.Error()
		return
	case run.err != nil:
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

// firstReport reports whether the run's outcome has not been announced
// yet, and marks it announced.
func (a *Agent) firstReport(run *verifyRun) bool {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	first := !run.reported
	run.reported = true
	return first
}

// startVerify returns the run answering request for the Snapshot name,
// starting it unless it exists; a run for another request is stopped.
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
	if vs.ctx.Err() != nil {
		// The agent is stopping: no new work.
		run.err, run.end = model.Errorf(model.ErrUnavailable, "the node agent is stopping"), time.Now()
		close(run.finished)
		cancel()
		return run
	}
	run.queued.Store(true)
	vs.wg.Add(1)
	go func() {
		defer vs.wg.Done()
		defer cancel()
		defer func() { run.end = time.Now(); close(run.finished) }()
		select {
		case vs.slots <- struct{}{}:
			defer func() { <-vs.slots }()
		case <-ctx.Done():
			run.err = model.Errorf(model.ErrAborted, "stopped before it began: %v", ctx.Err())
			return
		}
		run.queued.Store(false)
		run.res, run.err = a.Engine.VerifyBackup(ctx, handle, func(done, total int64) {
			// Called from parallel readers: keep the largest.
			for old := run.done.Load(); done > old && !run.done.CompareAndSwap(old, done); old = run.done.Load() {
			}
			run.total.Store(total)
		})
	}()
	return run
}

// forgetVerify drops the Snapshot's run for request once its outcome is
// recorded.
func (a *Agent) forgetVerify(name, request string) {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if run := vs.runs[name]; run != nil && clipRequest(run.request) == request {
		select {
		case <-run.finished:
			delete(vs.runs, name)
			a.progress.forget("verify/" + name)
		default:
		}
	}
}

// stopVerify stops a Snapshot's verification (the Snapshot is going, or
// the request was withdrawn).
func (a *Agent) stopVerify(name string) {
	vs := &a.verify
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if run := vs.runs[name]; run != nil {
		run.cancel()
		delete(vs.runs, name)
	}
	a.progress.forget("verify/" + name)
}
