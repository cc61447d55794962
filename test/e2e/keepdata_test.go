package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

// Kubernetes objects never own the data (docs/FORMAT.md, "Kubernetes
// objects"): these steps delete Cairn's objects the ways other than CSI
// that a cluster sees — a person, an uninstall — and check that the data
// stays and the node agent brings the objects back.

// waitRecovered waits until the node agent has re-created the object
// named name (another UID than old) and filled its status.
func (e *env) waitRecovered(obj client.Object, name string, old types.UID) error {
	return e.eventually(2*time.Minute, func() error {
		if err := e.cc.Get(e.ctx, client.ObjectKey{Name: name}, obj); err != nil {
			return err
		}
		if obj.GetUID() == old || obj.GetDeletionTimestamp() != nil || obj.GetAnnotations()[cairnv1.RecoveredAnnotation] == "" {
			return fmt.Errorf("%s not re-created by the node agent yet", name)
		}
		switch o := obj.(type) {
		case *cairnv1.Volume:
			if o.Status.Phase != cairnv1.PhaseReady || o.Status.SizeBytes == 0 {
				return fmt.Errorf("re-created volume %s: status %+v", name, o.Status)
			}
		case *cairnv1.Snapshot:
			if !o.Status.ReadyToUse {
				return fmt.Errorf("re-created snapshot %s: status %+v", name, o.Status)
			}
		}
		return nil
	})
}

// deleteVolumeObject deletes a PVC's Cairn Volume as `kubectl delete
// volume.cairn.csi.dev …` does, then expects the data to stay and the
// object to come back with the same spec.
func (e *env) deleteVolumeObject(pvc string) error {
	pv, err := e.pvOf(pvc)
	if err != nil {
		return err
	}
	id := pv.Spec.CSI.VolumeHandle
	var before cairnv1.Volume
	if err := e.cc.Get(e.ctx, client.ObjectKey{Name: id}, &before); err != nil {
		return err
	}
	if err := e.cc.Delete(e.ctx, &before); err != nil {
		return err
	}
	var after cairnv1.Volume
	if err := e.waitRecovered(&after, id, before.UID); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(e.fs.Mount, "volumes", id, "data.img")); err != nil {
		return fmt.Errorf("the volume's data went with its object: %w", err)
	}
	if after.Spec.Name != before.Spec.Name || after.Spec.NodeName != before.Spec.NodeName || after.Spec.FsType != before.Spec.FsType ||
		after.Status.SizeBytes != before.Status.SizeBytes || after.Labels[cairnv1.NodeLabel] != e.nodeName {
		return fmt.Errorf("re-created volume %+v / %+v differs from %+v / %+v", after.Spec, after.Status, before.Spec, before.Status)
	}
	return nil
}

// crdFiles maps the names of the CRDs in deploy/crds, which `kubectl
// delete -k deploy/kustomize/base` deletes with everything else, to their
// files.
func (e *env) crdFiles() (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(e.root, "deploy/crds", "*.yaml"))
	if err != nil {
		return nil, err
	}
	crds := map[string]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "kustomization.yaml") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var m metav1.PartialObjectMetadata
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		crds[m.Name] = f
	}
	if len(crds) != 7 {
		return nil, fmt.Errorf("deploy/crds defines %v, want Cairn's seven CRDs", crds)
	}
	return crds, nil
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// onDisk lists the IDs under a data root folder (volumes, snapshots).
func (e *env) onDisk(dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(e.fs.Mount, dir))
	var ids []string
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), "v-") || strings.HasPrefix(ent.Name(), "s-") {
			ids = append(ids, ent.Name())
		}
	}
	return ids
}

// reinstallCRDs deletes Cairn's CRDs, which deletes every Cairn object,
// while volumes and snapshots exist, checks that their data stays, applies
// the CRDs and the BackupTarget again and waits until the node agent has
// re-created a Volume for every volume and a Snapshot for every local
// snapshot on its data root, and reported its StorageNode again.
func (e *env) reinstallCRDs() error {
	crds, err := e.crdFiles()
	if err != nil {
		return err
	}
	vols, snaps := e.onDisk("volumes"), e.onDisk("snapshots")
	if len(vols) == 0 || len(snaps) == 0 {
		return fmt.Errorf("want volumes and snapshots on the data root, have %v and %v", vols, snaps)
	}
	dyn, err := dynamic.NewForConfig(e.c.RESTConfig())
	if err != nil {
		return err
	}
	start := time.Now()
	for n := range crds {
		if err := dyn.Resource(crdResource).Delete(e.ctx, n, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete CRD %s: %w", n, err)
		}
	}
	if err := e.eventually(2*time.Minute, func() error {
		for n := range crds {
			if _, err := dyn.Resource(crdResource).Get(e.ctx, n, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("CRD %s still there (%v)", n, err)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Printf("e2e    CRDs and their objects gone %.1fs after the delete\n", time.Since(start).Seconds())
	if got := e.onDisk("volumes"); !slices.Equal(got, vols) {
		return fmt.Errorf("volumes on the data root after the CRDs went: %v, before: %v", got, vols)
	}
	if got := e.onDisk("snapshots"); !slices.Equal(got, snaps) {
		return fmt.Errorf("snapshots on the data root after the CRDs went: %v, before: %v", got, snaps)
	}
	time.Sleep(2 * time.Second) // the agent's watches and writes fail meanwhile; it must live on
	if e.node.exited(0) {
		return fmt.Errorf("cairn node exited without its CRDs:\n%s", e.node.tail(3000))
	}
	start = time.Now()
	for _, file := range crds {
		if err := e.applyFile(file); err != nil {
			return err
		}
	}
	target := fmt.Sprintf("apiVersion: cairn.csi.dev/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: default\nspec:\n  url: file://%s\n", e.backups)
	if _, err := e.c.Apply(e.ctx, []byte(target)); err != nil {
		return err
	}
	for _, id := range vols {
		if err := e.waitRecovered(&cairnv1.Volume{}, id, ""); err != nil {
			return err
		}
	}
	for _, id := range snaps {
		if err := e.waitRecovered(&cairnv1.Snapshot{}, id, ""); err != nil {
			return err
		}
	}
	if err := e.waitStorageNode(); err != nil {
		return err
	}
	fmt.Printf("e2e    %d Volumes and %d Snapshots re-created %.1fs after the CRDs were applied again\n", len(vols), len(snaps), time.Since(start).Seconds())
	return nil
}
