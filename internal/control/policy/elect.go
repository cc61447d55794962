package policy

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// LeaseName is the Lease that elects the replica running the schedules.
const LeaseName = "cairn-protection-policies"

// Election configures RunElected.
type Election struct {
	Client    kubernetes.Interface
	Namespace string
	Identity  string
	// LeaseDuration, RenewDeadline and RetryPeriod as in the sidecars'
	// --leader-election-* flags (defaults 15s, 10s, 5s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// RunElected runs r while this replica holds the Lease, and campaigns
// again when it loses it, until ctx ends.
func RunElected(ctx context.Context, e Election, r *Runner) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaOf(e.Namespace),
		Client:     e.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	cfg := leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   orDefault(e.LeaseDuration, 15*time.Second),
		RenewDeadline:   orDefault(e.RenewDeadline, 10*time.Second),
		RetryPeriod:     orDefault(e.RetryPeriod, 5*time.Second),
		ReleaseOnCancel: true,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Running the protection policies", "identity", e.Identity)
				r.Run(ctx)
			},
			OnStoppedLeading: func() { klog.InfoS("No longer running the protection policies", "identity", e.Identity) },
		},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			klog.ErrorS(err, "Protection policy leader election")
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

func metaOf(ns string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: LeaseName, Namespace: ns} }
