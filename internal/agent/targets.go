package agent

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cairn-csi/cairn/internal/backup"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// EncryptionKeyEntry is the entry of a BackupTarget's encryptionKeySecret
// that holds the target's master key (32 raw bytes).
const EncryptionKeyEntry = "key"

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
		sec, err := a.targetSecret(ctx, t, t.Spec.CredentialsSecret, "credentials")
		if err != nil {
			return err
		}
		data := map[string]string{}
		for k, v := range sec.Data {
			data[k] = string(v)
		}
		if creds, err = objstore.CredentialsFromSecret(data); err != nil {
			return model.Errorf(model.ErrInvalidArgument, "backup target %q: Secret %s/%s: %v", t.Name, a.Namespace, t.Spec.CredentialsSecret, err)
		}
		version += "@" + sec.ResourceVersion
	}
	var key []byte
	if t.Spec.EncryptionKeySecret != "" {
		sec, err := a.targetSecret(ctx, t, t.Spec.EncryptionKeySecret, "encryption key")
		if err != nil {
			return err
		}
		key = sec.Data[EncryptionKeyEntry]
		if err := backup.CheckMasterKey(key); err != nil {
			return model.Errorf(model.ErrInvalidArgument, "backup target %q: Secret %s/%s, entry %q: %v",
				t.Name, a.Namespace, t.Spec.EncryptionKeySecret, EncryptionKeyEntry, err)
		}
		version += "#key@" + sec.ResourceVersion
	}
	if a.targets[t.Name] == version {
		return nil
	}
	st, err := objstore.Open(ctx, t.Spec.URL, creds)
	if err != nil {
		return model.Errorf(model.ErrUnavailable, "backup target %q: %v", t.Name, err)
	}
	if err := a.Engine.SetBackupTarget(t.Name, st, key); err != nil {
		return err
	}
	a.targets[t.Name] = version
	a.capacityChanged() // the StorageNode lists its targets
	return nil
}

// targetSecret reads a Secret a BackupTarget names (what says which),
// in Cairn's namespace.
func (a *Agent) targetSecret(ctx context.Context, t *cairnv1.BackupTarget, name, what string) (*corev1.Secret, error) {
	var sec corev1.Secret
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.Namespace, Name: name}, &sec); err != nil {
		return nil, model.Errorf(model.ErrUnavailable, "backup target %q: %s Secret %s/%s: %v", t.Name, what, a.Namespace, name, err)
	}
	return &sec, nil
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
