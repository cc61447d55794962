package policy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Event reasons on PVCs.
const (
	ReasonCreated        = "ProtectionSnapshotCreated"
	ReasonFailed         = "ProtectionSnapshotFailed"
	ReasonPruned         = "ProtectionSnapshotPruned"
	ReasonPolicyNotFound = "ProtectionPolicyNotFound"
)

// How a run waits for its snapshots.
const (
	pollInterval = 2 * time.Second
	// errorGrace is how long a snapshot's error must persist before the
	// run stops waiting for it (the snapshotter retries transient ones).
	errorGrace = 30 * time.Second
	// maxVolumeStatuses bounds a policy's status.volumes.
	maxVolumeStatuses = 1000
)

// Runner runs the ProtectionPolicies: Run on one controller replica at a
// time (RunElected).
type Runner struct {
	Client client.Client // writes: VolumeSnapshots and policies' status
	Reader client.Reader // reads, from the API server (no cache)
	Events recorder.EventRecorder
	// Driver is the CSI driver whose PVs are Cairn volumes.
	Driver string
	// Resync is how often policies are read and due runs started.
	Resync time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time

	mu      sync.Mutex
	running map[string]bool
	// done is the schedule time of each policy's (by UID) last completed
	// run, in case its status could not be written.
	done map[types.UID]time.Time
	// warned limits ProtectionPolicyNotFound events to one per PVC per
	// warnEvery.
	warned map[types.UID]time.Time
	wg     sync.WaitGroup
}

// warnEvery is how often a PVC whose class names a missing policy is told.
const warnEvery = time.Hour

// maxMessage bounds the error texts written into a policy's status.
const maxMessage = 1024

func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return s[:maxMessage] + "…"
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Run starts every due run, every Resync, until ctx ends; it then waits
// for the runs in progress, which stop at their next API call.
func (r *Runner) Run(ctx context.Context) {
	resync := r.Resync
	if resync <= 0 {
		resync = 10 * time.Second
	}
	tick := time.NewTicker(resync)
	defer tick.Stop()
	for {
		r.pass(ctx)
		select {
		case <-ctx.Done():
			r.wg.Wait()
			return
		case <-tick.C:
		}
	}
}

// pass reads the policies and starts each due run that is not running.
func (r *Runner) pass(ctx context.Context) {
	var list cairnv1.ProtectionPolicyList
	if err := r.Reader.List(ctx, &list); err != nil {
		if ctx.Err() == nil {
			klog.ErrorS(err, "Listing ProtectionPolicies")
		}
		return
	}
	names := map[string]bool{}
	for _, p := range list.Items {
		names[p.Name] = true
	}
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		pol, err := Check(p)
		if err != nil {
			r.setStatus(ctx, p, func(st *cairnv1.ProtectionPolicyStatus) {
				st.NextScheduleTime = nil
				setReady(st, p.Generation, metav1.ConditionFalse, "InvalidSpec", err.Error())
			})
			continue
		}
		since := p.CreationTimestamp.Time
		if p.Status.LastScheduleTime != nil {
			since = p.Status.LastScheduleTime.Time
		}
		if d := r.lastDone(p.UID); d.After(since) {
			since = d
		}
		scheduleInterval.WithLabelValues(p.Name).Set(pol.Schedule.Interval(r.now()).Seconds())
		var slot time.Time
		due := false
		if !p.Spec.Suspend {
			slot, due = pol.Schedule.Due(since, r.now())
		}
		if !due {
			next := pol.Schedule.Next(since)
			if p.Spec.Suspend {
				next = time.Time{}
			}
			r.setStatus(ctx, p, func(st *cairnv1.ProtectionPolicyStatus) {
				st.NextScheduleTime = timeOrNil(next)
				reason := "Scheduled"
				if p.Spec.Suspend {
					reason = "Suspended"
				}
				setReady(st, p.Generation, metav1.ConditionTrue, reason, "")
			})
			continue
		}
		if !r.claim(p.Name) {
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.release(p.Name)
			r.run(ctx, pol, slot, names)
		}()
	}
}

func (r *Runner) claim(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running == nil {
		r.running = map[string]bool{}
	}
	if r.running[name] {
		return false
	}
	r.running[name] = true
	return true
}

func (r *Runner) lastDone(uid types.UID) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done[uid]
}

func (r *Runner) setDone(uid types.UID, slot time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = map[types.UID]time.Time{}
	}
	r.done[uid] = slot
}

// shouldWarn says whether the PVC may get a ProtectionPolicyNotFound
// event now.
func (r *Runner) shouldWarn(uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.warned == nil {
		r.warned = map[types.UID]time.Time{}
	}
	if t, ok := r.warned[uid]; ok && r.now().Sub(t) < warnEvery {
		return false
	}
	r.warned[uid] = r.now()
	return true
}

func (r *Runner) release(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.running, name)
}

// target is a PVC a run snapshots.
type target struct {
	claim Claim
	pvc   *corev1.PersistentVolumeClaim
	// inUse holds the VolumeSnapshots that PVCs of its namespace not yet
	// Bound are being restored from (shared by the namespace's targets).
	inUse map[string]bool
}

// run is one run of pol for schedule time slot.
func (r *Runner) run(ctx context.Context, pol *Policy, slot time.Time, policies map[string]bool) {
	start := r.now()
	name := pol.Obj.Name
	log := klog.FromContext(ctx).WithValues("policy", name, "scheduleTime", slot.Format(time.RFC3339))
	log.Info("Protection policy run starting")
	all, err := r.claims(ctx)
	if err != nil {
		log.Error(err, "Listing the PVCs")
		r.setStatus(ctx, pol.Obj, func(st *cairnv1.ProtectionPolicyStatus) { st.Message = "listing PVCs: " + err.Error() })
		return // retried at the next pass
	}
	var targets []target
	for _, t := range all {
		if n := t.claim.Named(); n != "" && n != model.PolicyNone && !policies[n] && r.shouldWarn(t.pvc.UID) {
			r.Events.Eventf(t.pvc, nil, corev1.EventTypeWarning, ReasonPolicyNotFound, ReasonPolicyNotFound,
				"the PVC's class names ProtectionPolicy %q, which does not exist: no scheduled snapshots", n)
		}
		if pol.AppliesTo(t.claim) {
			targets = append(targets, t)
		}
	}
	// A worker waits for a snapshot at most until the next schedule time,
	// so runs of one policy never overlap.
	deadline := pol.Schedule.Next(r.now())
	results := make([]cairnv1.PolicyVolumeStatus, len(targets))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(pol.Concurrency(), max(len(targets), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = r.protect(ctx, pol, targets[i], slot, deadline)
			}
		}()
	}
	for i := range targets {
		work <- i
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return // lost the lease or stopping: the next leader runs it again
	}
	r.setDone(pol.Obj.UID, slot)
	failed := 0
	for _, v := range results {
		if v.LastError != "" {
			failed++
		}
	}
	result := "succeeded"
	if failed > 0 {
		result = "failed"
	}
	runs.WithLabelValues(name, result).Inc()
	sort.Slice(results, func(i, j int) bool {
		if results[i].Namespace != results[j].Namespace {
			return results[i].Namespace < results[j].Namespace
		}
		return results[i].PersistentVolumeClaim < results[j].PersistentVolumeClaim
	})
	msg := fmt.Sprintf("%d PVCs, %d failed", len(results), failed)
	if first := firstError(results); first != "" {
		msg += ": " + truncate(first)
	}
	if len(results) > maxVolumeStatuses {
		msg += fmt.Sprintf(" (status lists the first %d)", maxVolumeStatuses)
		results = results[:maxVolumeStatuses]
	}
	end := r.now()
	r.setStatus(ctx, pol.Obj, func(st *cairnv1.ProtectionPolicyStatus) {
		st.LastScheduleTime = &metav1.Time{Time: slot}
		st.LastRunTime = &metav1.Time{Time: start}
		st.LastCompletionTime = &metav1.Time{Time: end}
		st.NextScheduleTime = timeOrNil(pol.Schedule.Next(slot))
		if next := pol.Schedule.Next(slot); !next.After(end) {
			st.NextScheduleTime = timeOrNil(pol.Schedule.Next(end)) // a run that outlasted the next time
		}
		st.Volumes = results
		st.Message = msg
		setReady(st, pol.Obj.Generation, metav1.ConditionTrue, "Scheduled", "")
	})
	log.Info("Protection policy run done", "pvcs", len(targets), "failed", failed, "took", end.Sub(start).Round(time.Millisecond))
}

// claims lists the Bound PVCs of Cairn volumes with the policies their
// classes name.
func (r *Runner) claims(ctx context.Context) ([]target, error) {
	var pvcs corev1.PersistentVolumeClaimList
	if err := r.Reader.List(ctx, &pvcs); err != nil {
		return nil, err
	}
	var pvs corev1.PersistentVolumeList
	if err := r.Reader.List(ctx, &pvs); err != nil {
		return nil, err
	}
	var scs storagev1.StorageClassList
	if err := r.Reader.List(ctx, &scs); err != nil {
		return nil, err
	}
	var vacs storagev1.VolumeAttributesClassList
	if err := r.Reader.List(ctx, &vacs); err != nil && !meta.IsNoMatchError(err) && !apierrors.IsNotFound(err) {
		return nil, err
	}
	inUse := map[string]map[string]bool{} // namespace -> VolumeSnapshot names
	for _, p := range pvcs.Items {
		if p.Status.Phase == corev1.ClaimBound {
			continue
		}
		for _, ref := range []*corev1.TypedLocalObjectReference{p.Spec.DataSource, typedLocal(p.Spec.DataSourceRef)} {
			if ref != nil && ref.Kind == "VolumeSnapshot" {
				if inUse[p.Namespace] == nil {
					inUse[p.Namespace] = map[string]bool{}
				}
				inUse[p.Namespace][ref.Name] = true
			}
		}
	}
	ours := map[string]bool{}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == r.Driver {
			ours[pv.Name] = true
		}
	}
	scPolicy := map[string]string{}
	for _, sc := range scs.Items {
		scPolicy[sc.Name] = sc.Parameters[model.ParamProtectionPolicy]
	}
	vacPolicy := map[string]string{}
	for _, v := range vacs.Items {
		vacPolicy[v.Name] = v.Parameters[model.ParamProtectionPolicy]
	}
	var out []target
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.DeletionTimestamp != nil || pvc.Status.Phase != corev1.ClaimBound || !ours[pvc.Spec.VolumeName] {
			continue
		}
		c := Claim{Namespace: pvc.Namespace, Name: pvc.Name, Labels: pvc.Labels}
		if pvc.Spec.StorageClassName != nil {
			c.ClassPolicy = scPolicy[*pvc.Spec.StorageClassName]
		}
		if v := pvc.Status.CurrentVolumeAttributesClassName; v != nil {
			c.VACPolicy = vacPolicy[*v]
		}
		out = append(out, target{claim: c, pvc: pvc, inUse: inUse[pvc.Namespace]})
	}
	return out, nil
}

// protect makes a PVC's snapshot of this run, waits for it and prunes.
func (r *Runner) protect(ctx context.Context, pol *Policy, t target, slot, deadline time.Time) cairnv1.PolicyVolumeStatus {
	st := cairnv1.PolicyVolumeStatus{Namespace: t.claim.Namespace, PersistentVolumeClaim: t.claim.Name}
	name := SnapshotName(t.claim.Name, pol.Obj.Name, slot)
	vs, created, err := r.ensure(ctx, pol, t, name, slot)
	if err == nil {
		st.LastSnapshot, st.LastSnapshotTime = name, vs.CreationTimestamp.DeepCopy()
		if created {
			r.Events.Eventf(t.pvc, vs, corev1.EventTypeNormal, ReasonCreated, ReasonCreated,
				"ProtectionPolicy %s created VolumeSnapshot %s (class %s)", pol.Obj.Name, name, pol.Obj.Spec.SnapshotClassName)
		}
		err = r.wait(ctx, vs, deadline)
	}
	if err != nil && ctx.Err() == nil {
		st.LastError = truncate(err.Error())
		r.Events.Eventf(t.pvc, nil, corev1.EventTypeWarning, ReasonFailed, ReasonFailed,
			"ProtectionPolicy %s: VolumeSnapshot %s: %v", pol.Obj.Name, name, err)
	}
	n, last, perr := r.prune(ctx, pol, t)
	st.Snapshots = int32(n)
	st.LastSuccessTime = timeOrNil(last)
	if !last.IsZero() {
		lastSuccess.WithLabelValues(pol.Obj.Name, t.claim.Namespace, t.claim.Name).Set(float64(last.Unix()))
	}
	if perr != nil && st.LastError == "" && ctx.Err() == nil {
		st.LastError = truncate("pruning: " + perr.Error())
	}
	return st
}

// ensure creates the run's VolumeSnapshot, or finds the one an earlier
// try of the same run made.
func (r *Runner) ensure(ctx context.Context, pol *Policy, t target, name string, slot time.Time) (*snapv1.VolumeSnapshot, bool, error) {
	class := pol.Obj.Spec.SnapshotClassName
	c := t.claim
	pvcName := c.Name
	vs := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: c.Namespace,
			Labels: map[string]string{cairnv1.PolicyLabel: pol.Obj.Name},
			Annotations: map[string]string{cairnv1.ScheduleTimeAnnotation: slot.UTC().Format(time.RFC3339),
				cairnv1.PVCUIDAnnotation: string(t.pvc.UID)},
		},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvcName},
			VolumeSnapshotClassName: &class,
		},
	}
	err := r.Client.Create(ctx, vs)
	if err == nil {
		return vs, true, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, false, fmt.Errorf("creating: %w", err)
	}
	if err := r.Reader.Get(ctx, client.ObjectKeyFromObject(vs), vs); err != nil {
		return nil, false, err
	}
	if !madeBy(vs, pol.Obj.Name, t.pvc) {
		return nil, false, fmt.Errorf("a VolumeSnapshot of that name exists and was not made by this policy for this PVC")
	}
	return vs, false, nil
}

// madeBy says whether vs is a snapshot of this very PVC (by UID) made by
// policy: the label, the source, the PVC's UID and the name the policy
// gives its schedule time must all agree, so that a snapshot made by
// hand (or restored from elsewhere with the label) is never taken for one.
func madeBy(vs *snapv1.VolumeSnapshot, policy string, pvc *corev1.PersistentVolumeClaim) bool {
	src := vs.Spec.Source.PersistentVolumeClaimName
	if vs.Labels[cairnv1.PolicyLabel] != policy || src == nil || *src != pvc.Name || vs.Annotations[cairnv1.PVCUIDAnnotation] != string(pvc.UID) {
		return false
	}
	slot, err := time.Parse(time.RFC3339, vs.Annotations[cairnv1.ScheduleTimeAnnotation])
	return err == nil && vs.Name == SnapshotName(pvc.Name, policy, slot)
}

// wait polls vs until it is ready, its error has lasted errorGrace, or
// deadline passes.
func (r *Runner) wait(ctx context.Context, vs *snapv1.VolumeSnapshot, deadline time.Time) error {
	var erredSince time.Time
	for {
		if st := vs.Status; st != nil {
			if st.ReadyToUse != nil && *st.ReadyToUse {
				return nil
			}
			if st.Error != nil {
				if erredSince.IsZero() {
					erredSince = r.now()
				}
				if r.now().Sub(erredSince) >= errorGrace {
					return errors.New(snapshotError(st))
				}
			} else {
				erredSince = time.Time{}
			}
		}
		if !deadline.IsZero() && r.now().After(deadline) {
			msg := "not ready by the next schedule time"
			if vs.Status != nil && vs.Status.Error != nil {
				msg += ": " + snapshotError(vs.Status)
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
		if err := r.Reader.Get(ctx, client.ObjectKeyFromObject(vs), vs); err != nil {
			if apierrors.IsNotFound(err) {
				return errors.New("deleted while it was being made")
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			klog.V(2).InfoS("Reading a VolumeSnapshot", "volumeSnapshot", klog.KObj(vs), "err", err)
		}
	}
}

func snapshotError(st *snapv1.VolumeSnapshotStatus) string {
	if st.Error != nil && st.Error.Message != nil {
		return *st.Error.Message
	}
	return "failed"
}

// prune deletes the PVC's snapshots of this policy beyond its retention
// and returns how many are left and the newest ready one's creation time.
func (r *Runner) prune(ctx context.Context, pol *Policy, t target) (int, time.Time, error) {
	var list snapv1.VolumeSnapshotList
	if err := r.Reader.List(ctx, &list, client.InNamespace(t.claim.Namespace), client.MatchingLabels{cairnv1.PolicyLabel: pol.Obj.Name}); err != nil {
		return 0, time.Time{}, err
	}
	// (A PVC that starts a restore after the run listed the PVCs is
	// protected by snapshot-controller's source-protection finalizer.)
	inUse := t.inUse
	var snaps []Snap
	byName := map[string]*snapv1.VolumeSnapshot{}
	var last time.Time
	for i := range list.Items {
		vs := &list.Items[i]
		if vs.DeletionTimestamp != nil || !madeBy(vs, pol.Obj.Name, t.pvc) {
			continue
		}
		ready := vs.Status != nil && vs.Status.ReadyToUse != nil && *vs.Status.ReadyToUse
		snaps = append(snaps, Snap{Name: vs.Name, Created: vs.CreationTimestamp.Time, Ready: ready, InUse: inUse[vs.Name]})
		byName[vs.Name] = vs
		if ready && vs.CreationTimestamp.After(last) {
			last = vs.CreationTimestamp.Time
		}
	}
	if pol.Obj.Spec.Suspend {
		return len(snaps), last, nil
	}
	var maxAge time.Duration
	if pol.Obj.Spec.MaxAge != nil {
		maxAge = pol.Obj.Spec.MaxAge.Duration
	}
	left := len(snaps)
	var firstErr error
	for _, name := range Prune(snaps, int(pol.Obj.Spec.Retain), maxAge, r.now()) {
		vs := byName[name]
		uid, rv := vs.UID, vs.ResourceVersion
		err := r.Client.Delete(ctx, vs, client.Preconditions{UID: &uid, ResourceVersion: &rv})
		if err != nil && !apierrors.IsNotFound(err) {
			if firstErr == nil {
				firstErr = fmt.Errorf("deleting %s: %w", name, err)
			}
			continue
		}
		left--
		r.Events.Eventf(t.pvc, nil, corev1.EventTypeNormal, ReasonPruned, ReasonPruned,
			"ProtectionPolicy %s deleted VolumeSnapshot %s (retain %d)", pol.Obj.Name, name, pol.Obj.Spec.Retain)
	}
	return left, last, firstErr
}

func firstError(vs []cairnv1.PolicyVolumeStatus) string {
	for _, v := range vs {
		if v.LastError != "" {
			return v.Namespace + "/" + v.PersistentVolumeClaim + ": " + v.LastError
		}
	}
	return ""
}

func typedLocal(r *corev1.TypedObjectReference) *corev1.TypedLocalObjectReference {
	if r == nil || (r.Namespace != nil && *r.Namespace != "") {
		return nil // a cross-namespace source is not this namespace's snapshot
	}
	return &corev1.TypedLocalObjectReference{APIGroup: r.APIGroup, Kind: r.Kind, Name: r.Name}
}

// setStatus changes a policy's status with mod and writes it if it
// changed (a merge patch of the status subresource).
func (r *Runner) setStatus(ctx context.Context, p *cairnv1.ProtectionPolicy, mod func(*cairnv1.ProtectionPolicyStatus)) {
	next := p.DeepCopy()
	mod(&next.Status)
	next.Status.ObservedGeneration = p.Generation
	if equalStatus(p.Status, next.Status) {
		return
	}
	if err := r.Client.Status().Patch(ctx, next, client.MergeFrom(p)); err != nil && ctx.Err() == nil {
		klog.ErrorS(err, "Writing a ProtectionPolicy's status", "policy", p.Name)
		return
	}
	p.Status = next.Status
}

func equalStatus(a, b cairnv1.ProtectionPolicyStatus) bool {
	return readyOf(a) == readyOf(b) && a.ObservedGeneration == b.ObservedGeneration &&
		timesEqual(a.NextScheduleTime, b.NextScheduleTime) && timesEqual(a.LastScheduleTime, b.LastScheduleTime) &&
		timesEqual(a.LastCompletionTime, b.LastCompletionTime) && a.Message == b.Message
}

// readyOf is the Ready condition's status, reason and message ("" if none).
func readyOf(s cairnv1.ProtectionPolicyStatus) string {
	if c := meta.FindStatusCondition(s.Conditions, cairnv1.ConditionReady); c != nil {
		return string(c.Status) + "\x00" + c.Reason + "\x00" + c.Message
	}
	return ""
}

func timesEqual(a, b *metav1.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

func setReady(st *cairnv1.ProtectionPolicyStatus, gen int64, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: cairnv1.ConditionReady, Status: status,
		Reason: reason, Message: msg, ObservedGeneration: gen})
}

func timeOrNil(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	return &metav1.Time{Time: t}
}

// LeaseName is the Lease that elects the replica running the schedules.
const LeaseName = "cairn-protection-policies"
