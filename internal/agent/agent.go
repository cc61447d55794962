// Package agent is the node agent of Kubernetes mode: controller-runtime
// reconcilers that carry out the Volume, Snapshot and BackupTarget objects
// assigned to this node with the local engine, report their status, and
// re-create missing objects from the data root (recover.go).
package agent

import (
	"context"
	"errors"
	"fmt"
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
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
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
}

// CacheOptions restricts a node agent's informers to what it needs:
// the Volumes and Snapshots labelled with its node, its own StorageNode,
// and Secrets in its namespace only.
func CacheOptions(node, namespace string) cache.Options {
	mine := labels.SelectorFromSet(labels.Set{cairnv1.NodeLabel: node})
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&cairnv1.Volume{}:      {Label: mine},
		&cairnv1.Snapshot{}:    {Label: mine},
		&cairnv1.StorageNode{}: {Field: fields.OneTermEqualSelector("metadata.name", node)},
		&corev1.Secret{}:       {Namespaces: map[string]cache.Config{namespace: {}}},
	}}
}

// SetupWithManager registers the agent's reconcilers and heartbeat.
func (a *Agent) SetupWithManager(mgr ctrl.Manager) error {
	a.client = mgr.GetClient()
	a.events = mgr.GetEventRecorder("cairn-node")
	a.kick = make(chan struct{}, 1)
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
	t := time.NewTicker(a.Heartbeat)
	defer t.Stop()
	for {
		if err := a.report(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Reporting the storage node status failed", "node", a.Node)
		}
		select {
		case <-ctx.Done():
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
	if ready.Status != metav1.ConditionTrue {
		sn.Status.AvailableBytes = 0
	}
	sn.Status.CloneMode = string(a.Engine.CloneMode())
	sn.Status.BackupTargets = a.Engine.BackupTargets()
	sn.Status.Version = a.Version
	sn.Status.HeartbeatTime = metav1.Now()
	meta.SetStatusCondition(&sn.Status.Conditions, ready)
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

func (a *Agent) reconcileVolume(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var v cairnv1.Volume
	if err := a.client.Get(ctx, req.NamespacedName, &v); err != nil {
		return reconcile.Result{}, a.gone(err)
	}
	if v.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	log := klog.FromContext(ctx).WithValues("volumeID", v.Name, "name", v.Spec.Name)
	if !v.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, a.deleteVolume(ctx, log, &v)
	}
	if v.Name != model.VolumeIDForName(v.Spec.Name) {
		// Not an object the controller wrote: the engine would make or
		// find a volume under another ID than this object's name.
		return reconcile.Result{}, a.refuse(ctx, &v, volumeStatus(&v), fmt.Sprintf("object name %q is not the volume ID of spec.name %q", v.Name, v.Spec.Name))
	}
	done := v.Status.Phase == cairnv1.PhaseReady && v.Status.ObservedGeneration == v.Generation
	if done {
		return reconcile.Result{}, nil
	}
	orig := v.DeepCopy()
	ev, err := a.Engine.GetVolume(ctx, v.Name)
	created := false
	if errors.Is(err, model.ErrNotFound) && recovered(&v) {
		err = model.Errorf(model.ErrNotFound, "volume %s was re-created from node %s's data root, whose data is now gone; nothing is made in its place", v.Name, a.Node)
	} else if errors.Is(err, model.ErrNotFound) {
		if err = a.prepareSource(ctx, v.Spec.Source); err == nil {
			cctx := ctx
			if s := v.Spec.Source; s != nil && s.Kind == cairnv1.SourceBackup {
				// A download may take hours: the engine goes on in the
				// background and answers Aborted with its progress at
				// the deadline; the status shows it and we look again.
				var cancel context.CancelFunc
				cctx, cancel = context.WithTimeout(ctx, a.Progress)
				defer cancel()
			}
			ev, err = a.Engine.CreateVolume(cctx, createRequest(&v))
			created = err == nil
		}
	}
	msg := ""
	if err == nil {
		v.Status.SizeBytes, v.Status.FsType = ev.SizeBytes, ev.FsType
		msg = fmt.Sprintf("%d bytes on node %s", ev.SizeBytes, a.Node)
		// Expand when the file is smaller than asked, and also when it is
		// not but the status never recorded the growth (the agent died, or
		// its status patch failed, after the engine grew the file): the
		// engine's answer is idempotent and says whether the node must
		// still grow the file system.
		unrecorded := !created && orig.Status.SizeBytes > 0 && v.Spec.RequiredBytes > orig.Status.SizeBytes
		if v.Spec.RequiredBytes > ev.SizeBytes || unrecorded {
			var res *model.ExpandResult
			if res, err = a.Engine.ExpandVolume(ctx, v.Name, v.Spec.RequiredBytes, v.Spec.LimitBytes); err == nil {
				v.Status.SizeBytes, v.Status.NodeExpansionRequired = res.SizeBytes, res.NodeExpansionRequired
				msg = fmt.Sprintf("expanded to %d bytes on node %s", res.SizeBytes, a.Node)
				a.event(&v, v.Spec.Parameters, false, "Expanded", "Volume expanded to %d bytes (file system growth by the node: %t)", res.SizeBytes, res.NodeExpansionRequired)
			}
		}
	}
	setOutcome(volumeStatus(&v), v.Generation, err, msg)
	switch {
	case created:
		a.capacityChanged()
		log.Info("Volume created", "size", ev.SizeBytes, "source", v.Spec.Source)
		a.event(&v, v.Spec.Parameters, false, "Created", "Volume created on node %s: %d bytes%s", a.Node, ev.SizeBytes, sourceNote(v.Spec.Source))
	case err != nil && !errors.Is(err, model.ErrAborted) && orig.Status.Message != v.Status.Message:
		log.Error(err, "Volume not ready")
		a.event(&v, v.Spec.Parameters, true, "Failed", "%v", err)
	case errors.Is(err, model.ErrAborted) && orig.Status.Phase != cairnv1.PhasePending:
		a.event(&v, v.Spec.Parameters, false, "InProgress", "%v", err)
	}
	if perr := a.client.Status().Patch(ctx, &v, client.MergeFrom(orig)); perr != nil {
		return reconcile.Result{}, perr
	}
	return a.retryAfter(err)
}

func sourceNote(s *cairnv1.VolumeSource) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf(" from %s %s", s.Kind, s.ID)
}

func createRequest(v *cairnv1.Volume) model.CreateVolumeRequest {
	r := model.CreateVolumeRequest{
		Name: v.Spec.Name, RequiredBytes: v.Spec.RequiredBytes, LimitBytes: v.Spec.LimitBytes,
		Block: v.Spec.Block, FsType: v.Spec.FsType, Parameters: v.Spec.Parameters,
	}
	if s := v.Spec.Source; s != nil {
		if s.Kind == cairnv1.SourceVolume {
			r.SourceVolumeID = s.ID
		} else {
			r.SourceSnapshotID = s.ID
		}
	}
	return r
}

// prepareSource makes sure a backup source's target is configured here.
func (a *Agent) prepareSource(ctx context.Context, s *cairnv1.VolumeSource) error {
	if s == nil || s.Kind != cairnv1.SourceBackup {
		return nil
	}
	h, err := model.ParseBackupHandle(s.ID)
	if err != nil {
		return err
	}
	return a.ensureTarget(ctx, h.Target)
}

func (a *Agent) reconcileSnapshot(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var s cairnv1.Snapshot
	if err := a.client.Get(ctx, req.NamespacedName, &s); err != nil {
		return reconcile.Result{}, a.gone(err)
	}
	if s.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	log := klog.FromContext(ctx).WithValues("snapshot", s.Name, "type", s.Spec.Type, "handle", s.Spec.Handle)
	if !s.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, a.deleteSnapshot(ctx, log, &s)
	}
	if why := snapshotNameProblem(&s); why != "" {
		return reconcile.Result{}, a.refuse(ctx, &s, snapshotStatus(&s), why)
	}
	if s.Status.ReadyToUse && s.Status.ObservedGeneration == s.Generation {
		return reconcile.Result{}, nil
	}
	orig := s.DeepCopy()
	var err error
	msg := ""
	switch {
	case s.Spec.Type == cairnv1.SnapshotLocal:
		var snap *model.Snapshot
		if recovered(&s) {
			// Never take a new snapshot in place of one that is gone.
			snap, err = a.Engine.GetSnapshot(ctx, s.Name)
		} else {
			snap, err = a.Engine.CreateSnapshot(ctx, s.Spec.Name, s.Spec.SourceVolumeID, s.Spec.Parameters)
		}
		if err == nil {
			setLocalSnapshotStatus(&s, snap)
			msg = "snapshot taken on node " + a.Node
		}
	default:
		var info *model.BackupInfo
		if err = a.ensureTarget(ctx, s.Spec.BackupTarget); err == nil {
			if s.Spec.Name != "" {
				info, err = a.Engine.CreateBackup(ctx, s.Spec.Name, s.Spec.SourceVolumeID, s.Spec.BackupTarget)
			} else {
				info, err = a.Engine.GetBackup(ctx, s.Spec.Handle)
			}
		}
		if err == nil {
			s.Status.SnapshotID, s.Status.SizeBytes, s.Status.SourceVolumeID = info.Handle.String(), info.SizeBytes, info.Handle.VolumeID
			s.Status.CreationTime = &metav1.Time{Time: info.CreatedAt}
			s.Status.ReadyToUse = info.Ready
			switch {
			case info.Ready:
				msg = "backup committed to target " + info.Handle.Target
			case info.LastError != "":
				err = model.Errorf(model.ErrUnavailable, "upload to %s failed, retrying: %s", info.Handle.Target, info.LastError)
			default:
				err = model.Errorf(model.ErrAborted, "uploading: %d of %d bytes", info.BytesDone, info.SizeBytes)
			}
		}
	}
	setOutcome(snapshotStatus(&s), s.Generation, err, msg)
	switch {
	case s.Status.ReadyToUse:
		log.Info("Snapshot ready")
		a.event(&s, s.Spec.Parameters, false, "Ready", "%s", msg)
	case err != nil && !errors.Is(err, model.ErrAborted) && orig.Status.Message != s.Status.Message:
		log.Error(err, "Snapshot not ready")
		a.event(&s, s.Spec.Parameters, true, "Failed", "%v", err)
	case orig.Status.CreationTime == nil && s.Status.CreationTime != nil:
		a.event(&s, s.Spec.Parameters, false, "Uploading", "Point-in-time copy taken; uploading to backup target %s", s.Spec.BackupTarget)
	}
	if perr := a.client.Status().Patch(ctx, &s, client.MergeFrom(orig)); perr != nil {
		return reconcile.Result{}, perr
	}
	if errors.Is(err, model.ErrUnavailable) && s.Status.CreationTime != nil {
		// The engine retries the upload itself; look again for progress.
		return reconcile.Result{RequeueAfter: a.Progress}, nil
	}
	return a.retryAfter(err)
}

// ensureTarget configures a backup target in the engine from its
// BackupTarget object (and credentials Secret) unless already done.
func (a *Agent) ensureTarget(ctx context.Context, name string) error {
	var t cairnv1.BackupTarget
	if err := a.client.Get(ctx, client.ObjectKey{Name: name}, &t); err != nil {
		if apierrors.IsNotFound(err) {
			return model.Errorf(model.ErrInvalidArgument, "backup target %q: no BackupTarget object of that name", name)
		}
		return err
	}
	return a.configureTarget(ctx, &t)
}

func (a *Agent) configureTarget(ctx context.Context, t *cairnv1.BackupTarget) error {
	a.targetMu <- struct{}{}
	defer func() { <-a.targetMu }()
	var creds objstore.Credentials
	version := t.Spec.URL
	if t.Spec.CredentialsSecret != "" {
		var sec corev1.Secret
		if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.Namespace, Name: t.Spec.CredentialsSecret}, &sec); err != nil {
			return model.Errorf(model.ErrUnavailable, "backup target %q: credentials Secret %s/%s: %v", t.Name, a.Namespace, t.Spec.CredentialsSecret, err)
		}
		data := map[string]string{}
		for k, v := range sec.Data {
			data[k] = string(v)
		}
		var err error
		if creds, err = objstore.CredentialsFromSecret(data); err != nil {
			return model.Errorf(model.ErrInvalidArgument, "backup target %q: Secret %s/%s: %v", t.Name, a.Namespace, t.Spec.CredentialsSecret, err)
		}
		version += "@" + sec.ResourceVersion
	}
	if a.targets[t.Name] == version {
		return nil
	}
	st, err := objstore.Open(ctx, t.Spec.URL, creds)
	if err != nil {
		return model.Errorf(model.ErrUnavailable, "backup target %q: %v", t.Name, err)
	}
	if err := a.Engine.SetBackupTarget(t.Name, st); err != nil {
		return err
	}
	a.targets[t.Name] = version
	a.capacityChanged() // the StorageNode lists its targets
	return nil
}

func (a *Agent) reconcileTarget(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var t cairnv1.BackupTarget
	err := a.client.Get(ctx, req.NamespacedName, &t)
	if apierrors.IsNotFound(err) {
		a.targetMu <- struct{}{}
		if _, ok := a.targets[req.Name]; ok {
			a.Engine.RemoveBackupTarget(req.Name)
			delete(a.targets, req.Name)
		}
		<-a.targetMu
		a.capacityChanged()
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if err := a.configureTarget(ctx, &t); err != nil {
		a.event(&t, nil, true, "TargetUnavailable", "Node %s cannot open backup target %s: %v", a.Node, t.Name, err)
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}
