package ui

import (
	"context"
	"fmt"
	"net/http"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

// inputError is a form field the UI refuses before any API call.
type inputError struct{ msg string }

func (e inputError) Error() string { return e.msg }

func badInput(format string, args ...any) error { return inputError{fmt.Sprintf(format, args...)} }

// name checks a form field that names a new object.
func name(r *http.Request, field string) (string, error) {
	n := r.PostFormValue(field)
	if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
		return "", badInput("%s %q is not a valid name: %s", field, n, errs[0])
	}
	return n, nil
}

// pvc reads the PVC the path names (with the caller's identity).
func pvc(ctx context.Context, c client.Client, r *http.Request) (*corev1.PersistentVolumeClaim, error) {
	var p corev1.PersistentVolumeClaim
	err := c.Get(ctx, client.ObjectKey{Namespace: r.PathValue("ns"), Name: r.PathValue("name")}, &p)
	return &p, err
}

// snapshot creates a VolumeSnapshot of the PVC with the chosen class (a
// local snapshot or a backup: the class decides).
func (s *Server) snapshot(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	class := r.PostFormValue("class")
	if errs := validation.IsDNS1123Subdomain(class); len(errs) > 0 {
		return "", badInput("class %q is not a VolumeSnapshotClass name", class)
	}
	p, err := pvc(ctx, c, r)
	if err != nil {
		return "", err
	}
	n := snapshotName(p.Name, s.now())
	vs := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: p.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "cairn-ui"}},
		Spec:       snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: &class, Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &p.Name}},
	}
	if err := c.Create(ctx, vs); err != nil {
		return "", err
	}
	return fmt.Sprintf("VolumeSnapshot %s created (class %s)", n, class), nil
}

// snapshotName is <pvc>-<UTC time>, shortened to a valid name.
func snapshotName(pvc string, t time.Time) string {
	suffix := "-" + t.UTC().Format("20060102-150405")
	if len(pvc)+len(suffix) > 253 {
		pvc = pvc[:253-len(suffix)]
	}
	return pvc + suffix
}

// expand patches the PVC's storage request (csi-resizer does the rest).
func (s *Server) expand(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	q, err := resource.ParseQuantity(r.PostFormValue("size"))
	if err != nil || q.Sign() <= 0 {
		return "", badInput("size %q is not a storage size such as 2Gi", r.PostFormValue("size"))
	}
	p, err := pvc(ctx, c, r)
	if err != nil {
		return "", err
	}
	if cur := p.Spec.Resources.Requests[corev1.ResourceStorage]; q.Cmp(cur) <= 0 {
		return "", badInput("size %s is not larger than the PVC's %s: volumes only grow", q.String(), cur.String())
	}
	patch := client.MergeFrom(p.DeepCopy())
	if p.Spec.Resources.Requests == nil {
		p.Spec.Resources.Requests = corev1.ResourceList{}
	}
	p.Spec.Resources.Requests[corev1.ResourceStorage] = q
	if err := c.Patch(ctx, p, patch); err != nil {
		return "", err
	}
	return fmt.Sprintf("PVC %s asked to grow to %s", p.Name, q.String()), nil
}

// restore creates a PVC from one of the PVC's VolumeSnapshots.
func (s *Server) restore(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	to, err := name(r, "newName")
	if err != nil {
		return "", err
	}
	from := r.PostFormValue("snapshot")
	p, err := pvc(ctx, c, r)
	if err != nil {
		return "", err
	}
	var vs snapv1.VolumeSnapshot
	if err := c.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: from}, &vs); err != nil {
		return "", err
	}
	size := p.Spec.Resources.Requests[corev1.ResourceStorage]
	if st := vs.Status; st != nil && st.RestoreSize != nil && st.RestoreSize.Cmp(size) > 0 {
		size = *st.RestoreSize
	}
	group := snapv1.GroupName
	return newPVC(ctx, c, p, to, size, &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: vs.Name},
		fmt.Sprintf("from VolumeSnapshot %s", vs.Name))
}

// clone creates a PVC with this PVC as its data source.
func (s *Server) clone(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	to, err := name(r, "newName")
	if err != nil {
		return "", err
	}
	p, err := pvc(ctx, c, r)
	if err != nil {
		return "", err
	}
	return newPVC(ctx, c, p, to, p.Spec.Resources.Requests[corev1.ResourceStorage],
		&corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: p.Name}, "cloned from PVC "+p.Name)
}

// newPVC creates a PVC like p (class, access modes, volume mode) from src.
func newPVC(ctx context.Context, c client.Client, p *corev1.PersistentVolumeClaim, to string, size resource.Quantity, src *corev1.TypedLocalObjectReference, what string) (string, error) {
	n := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: to, Namespace: p.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "cairn-ui"}},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: p.Spec.StorageClassName, AccessModes: p.Spec.AccessModes, VolumeMode: p.Spec.VolumeMode,
			Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
			DataSource: src,
		},
	}
	if err := c.Create(ctx, n); err != nil {
		return "", err
	}
	return fmt.Sprintf("PVC %s created, %s", to, what), nil
}

// deletePVC deletes the PVC (its reclaim policy decides about the data).
func (s *Server) deletePVC(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	p, err := pvc(ctx, c, r)
	if err != nil {
		return "", err
	}
	if err := sameObject(r, p.UID); err != nil {
		return "", err
	}
	if err := c.Delete(ctx, p, client.Preconditions{UID: uidPtr(p.UID)}); err != nil {
		return "", err
	}
	return "PVC " + p.Name + " deleted", nil
}

// deleteSnapshot deletes a VolumeSnapshot (its class's deletion policy
// decides about the data).
func (s *Server) deleteSnapshot(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	var vs snapv1.VolumeSnapshot
	if err := c.Get(ctx, client.ObjectKey{Namespace: r.PathValue("ns"), Name: r.PathValue("name")}, &vs); err != nil {
		return "", err
	}
	if err := sameObject(r, vs.UID); err != nil {
		return "", err
	}
	if err := c.Delete(ctx, &vs, client.Preconditions{UID: uidPtr(vs.UID)}); err != nil {
		return "", err
	}
	return "VolumeSnapshot " + vs.Name + " deleted", nil
}

// verify asks the node agent to read a backup back: it sets the backup
// Snapshot object's verify-request annotation to the time now (the
// object's status.verification then shows the progress and the outcome).
func (s *Server) verify(ctx context.Context, c client.Client, r *http.Request) (string, error) {
	var o cairnv1.Snapshot
	if err := c.Get(ctx, client.ObjectKey{Name: r.PathValue("name")}, &o); err != nil {
		return "", err
	}
	if err := sameObject(r, o.UID); err != nil {
		return "", err
	}
	if o.Spec.Type != cairnv1.SnapshotBackup || !o.Status.ReadyToUse {
		return "", badInput("snapshot %s is not a committed backup: only those can be verified", o.Name)
	}
	req := s.now().UTC().Format("2006-01-02T15:04:05.000Z")
	patch := client.MergeFromWithOptions(o.DeepCopy(), client.MergeFromWithOptimisticLock{})
	metav1.SetMetaDataAnnotation(&o.ObjectMeta, cairnv1.VerifyRequestAnnotation, req)
	if err := c.Patch(ctx, &o, patch); err != nil {
		return "", err
	}
	return fmt.Sprintf("Verification of backup %s asked for (%s): node %s reads every block back", o.Status.SnapshotID, req, o.Spec.NodeName), nil
}

func uidPtr(u types.UID) *types.UID { return &u }

// sameObject: a delete acts on the object the page showed (its form's
// uid), not on one made since under the same name.
func sameObject(r *http.Request, uid types.UID) error {
	if got := r.PostFormValue("uid"); got != string(uid) {
		return apierrors.NewConflict(schema.GroupResource{}, r.PathValue("name"),
			fmt.Errorf("it is not the object the page showed (uid %q, now %q): reload the page", got, uid))
	}
	return nil
}
