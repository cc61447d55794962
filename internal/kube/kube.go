// Package kube is Cairn's Kubernetes mode: the controller's remote backend
// (remote.go), which turns CSI controller calls into Cairn custom resources
// and waits for their status, and the node agent (agent.go), which
// reconciles the resources assigned to its node with the local engine.
// Custom resource names are derived from CSI IDs (names.go), so every
// replica of the controller and every retry lands on the same object.
package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/cairn-csi/cairn/internal/engine"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

// Scheme holds the Kubernetes built-in types and Cairn's.
var Scheme = runtime.NewScheme()

func init() {
	if err := clientgoscheme.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := cairnv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
}

// SnapshotObjectName is the name of the Snapshot object for a CSI snapshot
// ID: the ID itself for a local snapshot (s-<hex>), b-<hash> for a bs://
// backup handle, which is not a valid object name.
func SnapshotObjectName(snapshotID string) string {
	if !engine.IsBackupHandle(snapshotID) {
		return snapshotID
	}
	sum := sha256.Sum256([]byte("cairn/backup-handle/" + snapshotID))
	return "b-" + hex.EncodeToString(sum[:16])
}

// Status reasons: the engine error kind of a failure, so the controller
// can answer the CSI call with the same gRPC code the node would have.
var reasons = []struct {
	kind   error
	reason string
	final  bool // the same request can never succeed
}{
	{engine.ErrNotFound, "NotFound", true},
	{engine.ErrAlreadyExists, "AlreadyExists", true},
	{engine.ErrInvalidArgument, "InvalidArgument", true},
	{engine.ErrOutOfRange, "OutOfRange", true},
	{engine.ErrFailedPrecondition, "FailedPrecondition", false},
	{engine.ErrResourceExhausted, "ResourceExhausted", true},
	{engine.ErrUnavailable, "Unavailable", false},
	{engine.ErrAborted, "InProgress", false},
}

// reasonOf names the kind of an engine error ("Internal" if it has none).
func reasonOf(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.kind) {
			return r.reason
		}
	}
	return "Internal"
}

// failure turns a reported status reason and message back into an engine
// error, and tells whether retrying the same request is pointless.
func failure(reason, msg string) (err error, final bool) {
	for _, r := range reasons {
		if r.reason == reason {
			return engine.Errorf(r.kind, "%s", msg), r.final
		}
	}
	return fmt.Errorf("%s", msg), false
}
