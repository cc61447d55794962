// Package agent is the node agent of Kubernetes mode: controller-runtime
// reconcilers that carry out the Volume, Snapshot and BackupTarget objects
// assigned to this node with the local engine, report their status, and
// re-create missing objects from the data root (recover.go).
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Agent is the node agent: it reconciles the Volumes and Snapshots
// assigned to its node with the engine, configures backup targets from
// BackupTarget objects, and reports the data root in its StorageNode.
type Agent struct {
	Engine *engine.Engine
	// Node is this node's name (the CSI node ID).
	Node string
	// Namespace holds the backup targets' credential Secrets.
	Namespace string
	// Version is reported in the StorageNode.
	Version string
	// Heartbeat is how often the StorageNode status is refreshed.
	Heartbeat time.Duration
	// Progress is how often an operation in progress (a backup upload, a
	// restore) is looked at again.
	Progress time.Duration
	// Resync is how often the agent re-creates the Volume and Snapshot
	// objects missing for what its data root holds (recover.go); it also
	// does so at start-up and soon after one of its objects is gone.
	// Default: Heartbeat.
	Resync time.Duration
	// TransferEndpoint is the listen address ([host]:port) of the TLS
	// endpoint serving this node's snapshots and volumes to other nodes'
	// agents (transfer.go); empty: none served (copies from other nodes
	// still work).
	TransferEndpoint string
	// TransferAddress is host:port where other agents reach the endpoint,
	// published in the StorageNode; default: the listener's address.
	TransferAddress string

	reader   client.Reader // the API server, uncached: other nodes' objects
	ident    *kube.Identity
	transfer net.Listener
	client   client.Client
	events   recorder.EventRecorder
	kick     chan struct{}
	targets  map[string]string // configured target -> what it was opened from
	targetMu chan struct{}     // one target sync at a time
	// recoverKick asks for a recovery pass soon; dataMu keeps a recovery
	// from re-creating an object whose data a deletion is removing
	// (deletions hold it shared, the recovery of one object exclusively).
	recoverKick chan struct{}
	dataMu      sync.RWMutex
	verify      verifies // backup verifications running (verify.go)
	progress    progressGate
}

// progressGate spaces out the status writes of work in progress: each
// write is an update event that queues the object again at once, so
// without it an upload or a verification whose progress moves would be
// reconciled (and written) as fast as the API client allows.
type progressGate struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due says how long until the progress of key may be written again; 0
// means now, and the write is noted.
func (g *progressGate) due(key string, every time.Duration) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if wait := every - time.Since(g.last[key]); wait > 0 {
		return wait
	}
	if g.last == nil {
		g.last = map[string]time.Time{}
	}
	g.last[key] = time.Now()
	return 0
}

// forget drops key (its work ended).
func (g *progressGate) forget(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.last, key)
}

// progressDue is a.progress.due with the agent's Progress interval.
func (a *Agent) progressDue(key string) time.Duration { return a.progress.due(key, a.Progress) }

// CacheOptions restricts a node agent's informers to what it needs:
// the Volumes, Snapshots, GroupSnapshots and StandbyVolumes labelled with its node, its own StorageNode,
// and Secrets in its namespace only.
func CacheOptions(node, namespace string) cache.Options {
	mine := labels.SelectorFromSet(labels.Set{cairnv1.NodeLabel: node})
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&cairnv1.Volume{}:        {Label: mine},
		&cairnv1.Snapshot{}:      {Label: mine},
		&cairnv1.GroupSnapshot{}: {Label: mine},
		&cairnv1.StandbyVolume{}: {Label: mine},
		&cairnv1.StorageNode{}:   {Field: fields.OneTermEqualSelector("metadata.name", node)},
		&corev1.Secret{}:         {Namespaces: map[string]cache.Config{namespace: {}}},
	}}
}

// SetupWithManager registers the agent's reconcilers and heartbeat.
func (a *Agent) SetupWithManager(mgr ctrl.Manager) error {
	a.client = mgr.GetClient()
	a.reader = mgr.GetAPIReader()
	var err error
	if a.ident, err = kube.NewIdentity("cairn-node " + a.Node); err != nil {
		return fmt.Errorf("transfer certificate: %w", err)
	}
	if a.TransferEndpoint != "" {
		if a.transfer, err = a.listenTransfer(); err != nil {
			return err
		}
	}
	a.events = mgr.GetEventRecorder("cairn-node")
	a.kick = make(chan struct{}, 1)
	a.verify.runs = map[string]*verifyRun{}
	a.verify.slots = make(chan struct{}, verifySlots)
	a.verify.ctx, a.verify.stop = context.WithCancel(context.Background())
	a.recoverKick = make(chan struct{}, 1)
	a.targets = map[string]string{}
	a.targetMu = make(chan struct{}, 1)
	if a.Heartbeat <= 0 {
		a.Heartbeat = 30 * time.Second
	}
	if a.Progress <= 0 {
		a.Progress = 2 * time.Second
	}
	if a.Resync <= 0 {
		a.Resync = a.Heartbeat
	}
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[cairnv1.NodeLabel] == a.Node })
	// Objects are worked on in parallel (the engine serialises per ID), so
	// a slow one (a copy-mode clone, a large snapshot) does not hold up
	// the others on this node.
	opts := controller.Options{MaxConcurrentReconciles: 4}
	if err := ctrl.NewControllerManagedBy(mgr).Named("volume").For(&cairnv1.Volume{}).WithEventFilter(mine).
		WithOptions(opts).Complete(reconcile.Func(a.reconcileVolume)); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("snapshot").For(&cairnv1.Snapshot{}).WithEventFilter(mine).
		WithOptions(opts).Complete(reconcile.Func(a.reconcileSnapshot)); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("groupsnapshot").For(&cairnv1.GroupSnapshot{}).WithEventFilter(mine).
		WithOptions(opts).Complete(reconcile.Func(a.reconcileGroupSnapshot)); err != nil {
		return err
	}
	// A standby's first restore may take long: two at a time, apart
	// from the other objects' workers.
	if err := ctrl.NewControllerManagedBy(mgr).Named("standbyvolume").For(&cairnv1.StandbyVolume{}).WithEventFilter(mine).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2}).Complete(reconcile.Func(a.reconcileStandby)); err != nil {
		return err
	}
	// Targets are re-read when they or their credential Secret change.
	secretToTargets := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		if o.GetNamespace() != a.Namespace {
			return nil
		}
		var list cairnv1.BackupTargetList
		if err := a.client.List(ctx, &list); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, t := range list.Items {
			if t.Spec.CredentialsSecret == o.GetName() {
				out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: t.Name}})
			}
		}
		return out
	})
	if err := ctrl.NewControllerManagedBy(mgr).Named("backuptarget").For(&cairnv1.BackupTarget{}).
		Watches(&corev1.Secret{}, secretToTargets).Complete(reconcile.Func(a.reconcileTarget)); err != nil {
		return err
	}
	return mgr.Add(a)
}

// Start runs the heartbeat and the recovery of missing objects until ctx
// ends (manager.Runnable; the manager starts it once the caches are
// synced).
func (a *Agent) Start(ctx context.Context) error {
	go a.recoverLoop(ctx)
	if a.transfer != nil {
		go a.serveTransfer(ctx, a.transfer)
	}
	t := time.NewTicker(a.Heartbeat)
	defer t.Stop()
	for {
		if err := a.report(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Reporting the storage node status failed", "node", a.Node)
		}
		if err := a.checkHealth(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Checking volume health failed", "node", a.Node)
		}
		select {
		case <-ctx.Done():
			a.verify.stop()
			a.verify.wg.Wait()
			return nil
		case <-t.C:
		case <-a.kick:
		}
	}
}

// NeedLeaderElection: every node's agent runs.
func (a *Agent) NeedLeaderElection() bool { return false }

// capacityChanged asks for a StorageNode refresh soon.
func (a *Agent) capacityChanged() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// report writes this node's StorageNode status.
func (a *Agent) report(ctx context.Context) error {
	c, err := a.Engine.Capacity()
	ready := metav1.Condition{Type: cairnv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "DataRootHealthy", Message: "data root " + a.Engine.Root() + " is writable"}
	if herr := a.Engine.Health(); herr != nil || err != nil {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, "DataRootUnhealthy", fmt.Sprint(errors.Join(herr, err))
	}
	var sn cairnv1.StorageNode
	if err := a.client.Get(ctx, client.ObjectKey{Name: a.Node}, &sn); apierrors.IsNotFound(err) {
		sn = cairnv1.StorageNode{ObjectMeta: metav1.ObjectMeta{Name: a.Node}}
		if err := a.client.Create(ctx, &sn); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create storage node %s: %w", a.Node, err)
		}
	} else if err != nil {
		return err
	}
	patch := client.MergeFrom(sn.DeepCopy())
	sn.Status.CapacityBytes = c.TotalBytes
	sn.Status.AvailableBytes = c.AvailableBytes
	sn.Status.FreeBytes, sn.Status.ReservedBytes = c.FreeBytes, c.ReservedBytes
	if ready.Status != metav1.ConditionTrue {
		sn.Status.AvailableBytes = 0
	}
	sn.Status.CloneMode = string(a.Engine.CloneMode())
	sn.Status.IOLimits = a.Engine.IOLimitsSupport()
	sn.Status.BackupTargets = a.Engine.BackupTargets()
	sn.Status.Version = a.Version
	sn.Status.HeartbeatTime = metav1.Now()
	sn.Status.Transfer = a.transferStatus()
	meta.SetStatusCondition(&sn.Status.Conditions, ready)
	healthy := metav1.Condition{Type: cairnv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: "Healthy", Message: "data root " + a.Engine.Root() + ": no problems found"}
	if problems := a.Engine.StorageHealth(ctx); len(problems) > 0 {
		var msgs []string
		for _, p := range problems {
			msgs = append(msgs, string(p.Kind)+": "+p.Message)
		}
		healthy.Status, healthy.Reason, healthy.Message = metav1.ConditionFalse, problems[0].Reason, strings.Join(msgs, "; ")
	}
	if old := meta.FindStatusCondition(sn.Status.Conditions, cairnv1.ConditionHealthy); old == nil || old.Message != healthy.Message {
		switch {
		case healthy.Status == metav1.ConditionFalse:
			a.event(&sn, nil, true, "StorageUnhealthy", "%s", healthy.Message)
		case old != nil:
			a.event(&sn, nil, false, "StorageHealthy", "%s", healthy.Message)
		}
	}
	meta.SetStatusCondition(&sn.Status.Conditions, healthy)
	return a.client.Status().Patch(ctx, &sn, patch)
}

// event records an event on obj and, when the CSI call carried the PVC or
// VolumeSnapshot it serves (csi-provisioner/csi-snapshotter
// --extra-create-metadata), on that object too, where users look first.
func (a *Agent) event(obj client.Object, params map[string]string, warning bool, reason, format string, args ...any) {
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	a.events.Eventf(obj, nil, typ, reason, reason, format, args...)
	for _, ref := range []struct{ kind, apiVersion, name, ns string }{
		{"PersistentVolumeClaim", "v1", params["csi.storage.k8s.io/pvc/name"], params["csi.storage.k8s.io/pvc/namespace"]},
		{"VolumeSnapshot", "snapshot.storage.k8s.io/v1", params["csi.storage.k8s.io/volumesnapshot/name"], params["csi.storage.k8s.io/volumesnapshot/namespace"]},
	} {
		if ref.name != "" && ref.ns != "" {
			u := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{Kind: ref.kind, APIVersion: ref.apiVersion}, ObjectMeta: metav1.ObjectMeta{Name: ref.name, Namespace: ref.ns}}
			a.events.Eventf(u, obj, typ, reason, reason, format, args...)
		}
	}
}

// statusFields is what both kinds' status share.
type statusFields struct {
	phase, reason, message *string
	observed               *int64
	conditions             *[]metav1.Condition
}

func volumeStatus(v *cairnv1.Volume) statusFields {
	return statusFields{&v.Status.Phase, &v.Status.Reason, &v.Status.Message, &v.Status.ObservedGeneration, &v.Status.Conditions}
}

func snapshotStatus(s *cairnv1.Snapshot) statusFields {
	return statusFields{&s.Status.Phase, &s.Status.Reason, &s.Status.Message, &s.Status.ObservedGeneration, &s.Status.Conditions}
}

// setOutcome records the result of one reconcile attempt in the status.
func setOutcome(st statusFields, generation int64, err error, okMsg string) {
	*st.observed = generation
	cond := metav1.Condition{Type: cairnv1.ConditionReady, ObservedGeneration: generation}
	switch {
	case err == nil:
		*st.phase, *st.reason, *st.message = cairnv1.PhaseReady, "", okMsg
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, "Done", okMsg
	case errors.Is(err, model.ErrAborted):
		*st.phase, *st.reason, *st.message = cairnv1.PhasePending, "InProgress", err.Error()
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "InProgress", err.Error()
	default:
		*st.phase, *st.reason, *st.message = cairnv1.PhaseFailed, model.Reason(err), err.Error()
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, model.Reason(err), err.Error()
	}
	meta.SetStatusCondition(st.conditions, cond)
}

// retryAfter is how a failed attempt is retried: not at all when retrying
// cannot help, soon while in progress, with back-off otherwise.
func (a *Agent) retryAfter(err error) (reconcile.Result, error) {
	switch {
	case err == nil:
		return reconcile.Result{}, nil
	case errors.Is(err, model.ErrAborted):
		return reconcile.Result{RequeueAfter: a.Progress}, nil
	}
	if model.Final(err) {
		return reconcile.Result{}, nil
	}
	return reconcile.Result{}, err // the controller's rate-limited back-off
}

func (a *Agent) removeFinalizer(ctx context.Context, obj client.Object) error {
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	if !controllerutil.RemoveFinalizer(obj, cairnv1.Finalizer) {
		return nil
	}
	return client.IgnoreNotFound(a.client.Patch(ctx, obj, patch))
}
