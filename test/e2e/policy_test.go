package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

const (
	policyName  = "every-minute"
	policyClass = "cairn-backup" // deploy/examples/volumesnapshotclass-backup.yaml
	policyLease = "cairn-protection-policies"
)

var policyPVCs = []string{"policy-a-pvc", "policy-b-pvc"}

func policyObject(name, schedule string, retain int32) *cairnv1.ProtectionPolicy {
	return &cairnv1.ProtectionPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cairnv1.ProtectionPolicySpec{Schedule: schedule, SnapshotClassName: policyClass, Retain: retain}}
}

// protectionPolicies is the scheduled-backup walkthrough: a policy
// every minute with retain 3 on two PVCs (picked by a label), five runs,
// a hand-made snapshot that survives the pruning, and every controller
// killed across two schedule times: the missed job runs once.
func (e *env) protectionPolicies() error {
	sel := map[string]string{"cairn-e2e/backup": policyName}
	for _, n := range policyPVCs {
		if err := e.createPVC(n, "1Gi", nil, func(p *corev1.PersistentVolumeClaim) { p.Labels = sel }); err != nil {
			return err
		}
	}
	if err := e.snapshot("policy-a-by-hand", policyClass, policyPVCs[0]); err != nil {
		return err
	}
	// A hand-made one that carries the policy's label (as a re-applied
	// manifest or a restore tool would): not the policy's either.
	if _, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "policy-a-labelled-by-hand", Namespace: appNS, Labels: map[string]string{cairnv1.PolicyLabel: policyName}},
		Spec:       snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr(policyClass), Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr(policyPVCs[0])}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	// Bad specs: the API server refuses retain 0; a schedule that does not
	// parse is reported in the policy's status, naming the field.
	if err := e.cc.Create(e.ctx, policyObject("bad-retain", "* * * * *", 0)); !apierrors.IsInvalid(err) {
		return fmt.Errorf("a policy with retain 0: %v, want Invalid", err)
	}
	bad := policyObject("bad-schedule", "61 * * * *", 3)
	if err := e.cc.Create(e.ctx, bad); err != nil {
		return err
	}
	if err := e.eventually(time.Minute, func() error {
		var p cairnv1.ProtectionPolicy
		if err := e.cc.Get(e.ctx, client.ObjectKeyFromObject(bad), &p); err != nil {
			return err
		}
		c := meta.FindStatusCondition(p.Status.Conditions, cairnv1.ConditionReady)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "InvalidSpec" || !strings.Contains(c.Message, "spec.schedule") {
			return fmt.Errorf("bad-schedule's Ready condition: %+v", c)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := e.cc.Delete(e.ctx, bad); err != nil {
		return err
	}

	p := policyObject(policyName, "* * * * *", 3)
	p.Spec.Concurrency = 2
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: sel}
	if err := e.cc.Create(e.ctx, p); err != nil {
		return err
	}
	var slot time.Time
	var err error
	for run := 1; run <= 3; run++ {
		if slot, err = e.waitPolicyRun(slot); err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
		if err := e.checkPolicySnapshots(run, slot); err != nil {
			return fmt.Errorf("after run %d: %w", run, err)
		}
		fmt.Printf("e2e    run %d at schedule time %s: %d snapshots per PVC\n", run, slot.Format("15:04:05"), min(run, 3))
	}

	// Every controller pod killed (all its containers: the sidecars exit
	// without their driver anyway) across two schedule times, then
	// started again: one run, for the later time.
	var ctrl []*replica
	for _, r := range e.replicas {
		if r.pod != "snapshot-controller" && len(r.procs) == len(controllerContainers) {
			ctrl = append(ctrl, r)
		}
	}
	for _, r := range ctrl {
		for _, p := range r.procs {
			p.kill()
		}
	}
	missed1, missed2 := slot.Add(time.Minute), slot.Add(2*time.Minute)
	time.Sleep(time.Until(missed2.Add(3 * time.Second)))
	for _, r := range ctrl {
		for i, c := range controllerContainers {
			proc, err := e.startContainer(r.pod, c)
			if err != nil {
				return err
			}
			r.procs[i] = proc
		}
	}
	restarted := time.Now()
	if slot, err = e.waitPolicyRun(slot); err != nil {
		return fmt.Errorf("the run after the restart: %w", err)
	}
	if !slot.Equal(missed2) {
		return fmt.Errorf("after the restart the run was for %s, want the later missed time %s", slot, missed2)
	}
	for _, pvc := range policyPVCs {
		for _, t := range []time.Time{missed1, missed2} {
			n := 0
			for _, vs := range e.policySnapshots(pvc) {
				if vs.Annotations[cairnv1.ScheduleTimeAnnotation] == t.Format(time.RFC3339) {
					n++
				}
			}
			want := map[bool]int{true: 1, false: 0}[t.Equal(missed2)]
			if n != want {
				return fmt.Errorf("%s: %d snapshots for missed time %s, want %d", pvc, n, t.Format("15:04:05"), want)
			}
		}
	}
	fmt.Printf("e2e    run 4: controllers down over %s and %s, restarted; one run, for %s, %.1fs after the restart\n",
		missed1.Format("15:04"), missed2.Format("15:04"), slot.Format("15:04"), time.Since(restarted).Seconds())
	if err := e.checkPolicySnapshots(4, slot); err != nil {
		return err
	}
	if slot, err = e.waitPolicyRun(slot); err != nil {
		return fmt.Errorf("run 5: %w", err)
	}
	if err := e.checkPolicySnapshots(5, slot); err != nil {
		return err
	}
	fmt.Printf("e2e    run 5 at %s: 3 snapshots per PVC, the hand-made one kept\n", slot.Format("15:04:05"))
	if err := e.checkPolicyStatus(); err != nil {
		return err
	}
	if err := e.checkPolicyMetric(); err != nil {
		return err
	}
	for _, reason := range []string{"ProtectionSnapshotCreated", "ProtectionSnapshotPruned"} {
		if !e.hasEvent(policyPVCs[0], reason) {
			return fmt.Errorf("no %s event on %s", reason, policyPVCs[0])
		}
	}
	// Deleting the policy stops it and keeps its snapshots (the clean-up
	// step deletes them with the other VolumeSnapshots).
	return e.cc.Delete(e.ctx, p)
}

// waitPolicyRun waits for a run of the policy after schedule time after
// and returns its schedule time.
func (e *env) waitPolicyRun(after time.Time) (time.Time, error) {
	var slot time.Time
	err := e.eventually(150*time.Second, func() error {
		var p cairnv1.ProtectionPolicy
		if err := e.cc.Get(e.ctx, client.ObjectKey{Name: policyName}, &p); err != nil {
			return err
		}
		st := p.Status
		if st.LastScheduleTime == nil || !st.LastScheduleTime.After(after) {
			return fmt.Errorf("no run after %s yet (status %+v)", after.Format("15:04:05"), st)
		}
		slot = st.LastScheduleTime.UTC()
		return nil
	})
	return slot, err
}

// policySnapshots are a PVC's VolumeSnapshots made by the policy, oldest
// first.
func (e *env) policySnapshots(pvc string) []snapv1.VolumeSnapshot {
	list, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{LabelSelector: cairnv1.PolicyLabel + "=" + policyName})
	if err != nil {
		return nil
	}
	var out []snapv1.VolumeSnapshot
	for _, vs := range list.Items {
		if vs.Spec.Source.PersistentVolumeClaimName != nil && *vs.Spec.Source.PersistentVolumeClaimName == pvc && vs.DeletionTimestamp == nil &&
			vs.Annotations[cairnv1.ScheduleTimeAnnotation] != "" {
			out = append(out, vs)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreationTimestamp.Before(&out[j].CreationTimestamp) })
	return out
}

// checkPolicySnapshots checks that after run n (at schedule time slot)
// each PVC has min(n, 3) ready snapshots of the policy, the newest of
// this run, and that the hand-made snapshot is still there.
func (e *env) checkPolicySnapshots(n int, slot time.Time) error {
	for _, pvc := range policyPVCs {
		want := min(n, 3)
		err := e.eventually(30*time.Second, func() error {
			snaps := e.policySnapshots(pvc)
			if len(snaps) != want {
				var names []string
				for _, vs := range snaps {
					names = append(names, vs.Name)
				}
				return fmt.Errorf("%s has %d snapshots of the policy %v, want %d", pvc, len(snaps), names, want)
			}
			for _, vs := range snaps {
				if vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse {
					return fmt.Errorf("%s not ready", vs.Name)
				}
				if vs.Spec.VolumeSnapshotClassName == nil || *vs.Spec.VolumeSnapshotClassName != policyClass {
					return fmt.Errorf("%s has class %v", vs.Name, vs.Spec.VolumeSnapshotClassName)
				}
			}
			newest := snaps[len(snaps)-1]
			if got := newest.Annotations[cairnv1.ScheduleTimeAnnotation]; got != slot.Format(time.RFC3339) {
				return fmt.Errorf("%s's newest snapshot %s is of schedule time %s, want %s", pvc, newest.Name, got, slot.Format(time.RFC3339))
			}
			if wantName := pvc + "." + policyName + "." + slot.Format("20060102-150405"); newest.Name != wantName {
				return fmt.Errorf("newest snapshot %s, want the name %s", newest.Name, wantName)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, name := range []string{"policy-a-by-hand", "policy-a-labelled-by-hand"} {
		if _, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Get(e.ctx, name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("the hand-made snapshot %s: %w", name, err)
		}
	}
	return nil
}

// checkPolicyStatus checks the policy's per-PVC status after the runs.
func (e *env) checkPolicyStatus() error {
	var p cairnv1.ProtectionPolicy
	if err := e.cc.Get(e.ctx, client.ObjectKey{Name: policyName}, &p); err != nil {
		return err
	}
	st := p.Status
	if st.NextScheduleTime == nil || !st.NextScheduleTime.After(st.LastScheduleTime.Time) || len(st.Volumes) != len(policyPVCs) {
		return fmt.Errorf("policy status: %+v", st)
	}
	for i, v := range st.Volumes {
		if v.Namespace != appNS || v.PersistentVolumeClaim != policyPVCs[i] || v.LastError != "" || v.Snapshots != 3 ||
			v.LastSuccessTime == nil || v.LastSnapshot == "" {
			return fmt.Errorf("policy status of %s: %+v", policyPVCs[i], v)
		}
	}
	return nil
}

// checkPolicyMetric scrapes the replica that holds the policies' Lease
// for each PVC's recovery point.
func (e *env) checkPolicyMetric() error {
	lease, err := e.kc.CoordinationV1().Leases(namespace).Get(e.ctx, policyLease, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		return fmt.Errorf("policy lease: %v", err)
	}
	pod, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
	var addr string
	for _, r := range e.replicas {
		if r.pod == pod {
			for _, a := range r.procs[0].cmd.Args {
				if v, ok := strings.CutPrefix(a, "--http-endpoint="); ok {
					addr = v
				}
			}
		}
	}
	if addr == "" {
		return fmt.Errorf("lease holder %q: no replica with an HTTP endpoint", *lease.Spec.HolderIdentity)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	for _, pvc := range policyPVCs {
		want := fmt.Sprintf(`cairn_protection_last_success_timestamp_seconds{namespace="%s",persistentvolumeclaim="%s",policy="%s"}`, appNS, pvc, policyName)
		if !strings.Contains(string(body), want) {
			return fmt.Errorf("metrics of %s lack %s", pod, want)
		}
	}
	return nil
}

// hasEvent says whether a PVC in appNS has an event with this reason.
func (e *env) hasEvent(pvc, reason string) bool {
	evs, err := e.kc.EventsV1().Events(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return false
	}
	for _, ev := range evs.Items {
		if ev.Regarding.Kind == "PersistentVolumeClaim" && ev.Regarding.Name == pvc && ev.Reason == reason {
			return true
		}
	}
	return false
}

// checkBackupClaim reads a backup VolumeSnapshot's manifest with
// `cairn backup show --json` and checks the PVC recorded in it.
func (e *env) checkBackupClaim(snapshot, pvc string) error {
	handle, err := e.snapshotHandle(snapshot)
	if err != nil {
		return err
	}
	out, err := exec.Command(e.cairn, "backup", "show", "--json", "--target", "file://"+e.backups, handle).Output()
	if err != nil {
		return fmt.Errorf("cairn backup show %s: %w", handle, err)
	}
	var m struct {
		SizeBytes int64        `json:"sizeBytes"`
		Claim     *model.Claim `json:"claim"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return err
	}
	want := model.Claim{Name: pvc, Namespace: appNS, StorageClassName: storageClass, AccessModes: []string{"ReadWriteOnce"}, VolumeMode: "Filesystem", RequestBytes: gi}
	if m.Claim == nil || !reflect.DeepEqual(*m.Claim, want) {
		return fmt.Errorf("the manifest's claim is %+v, want %+v", m.Claim, want)
	}
	return nil
}
