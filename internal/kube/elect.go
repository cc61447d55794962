package kube

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// Election configures RunElected: the work of a controller that one
// replica at a time does.
type Election struct {
	Client    kubernetes.Interface
	Namespace string
	Identity  string
	// LeaseDuration, RenewDeadline and RetryPeriod as in the sidecars'
	// --leader-election-* flags (defaults 15s, 10s, 5s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// RunElected runs run while this replica holds the Lease lease (what names
// the work, for the logs), and campaigns again when it loses it, until
// ctx ends. run must return when its context ends.
func RunElected(ctx context.Context, e Election, lease, what string, run func(ctx context.Context)) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: lease, Namespace: e.Namespace},
		Client:     e.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	cfg := leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   orDefault(e.LeaseDuration, 15*time.Second),
		RenewDeadline:   orDefault(e.RenewDeadline, 10*time.Second),
		RetryPeriod:     orDefault(e.RetryPeriod, 5*time.Second),
		ReleaseOnCancel: true,
		Name:            lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Elected: running "+what, "lease", lease, "identity", e.Identity)
				run(ctx)
			},
			OnStoppedLeading: func() { klog.InfoS("No longer running "+what, "lease", lease, "identity", e.Identity) },
		},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			klog.ErrorS(err, "Leader election", "lease", lease)
			return
		}
		le.Run(ctx) // returns when leadership is lost or ctx ends
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
