package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const (
	// nodeLeaseDuration and heartbeatInterval are the kubelet's defaults:
	// the node lifecycle controller marks a node NotReady after 50s
	// without a renewal.
	nodeLeaseDuration = 40
	heartbeatInterval = 10 * time.Second
	// nodeIDAnnotation is where the kubelet records each CSI driver's node
	// ID (older sidecars read it when CSINode is missing).
	nodeIDAnnotation = "csi.volume.kubernetes.io/nodeid"
	kubeVersion      = "v1.36.3"
)

// RegisterNode does what a kubelet would: it creates the Node name with a
// Ready condition, capacity and allocatable, the labels kubernetes.io/hostname,
// kubernetes.io/os, kubernetes.io/arch and labels (which should include
// each driver's topology labels, e.g. topology.cairn.csi.dev/node), and
// the CSINode with drivers (also recorded in the node ID annotation). It
// keeps the node Ready until Stop by renewing its Lease in kube-node-lease
// and the Ready condition's heartbeat every 10s. It returns once the node
// lifecycle controller has taken the node-not-ready taint off, so the
// scheduler may place pods there.
func (c *Cluster) RegisterNode(ctx context.Context, name string, labels map[string]string, drivers []storagev1.CSINodeDriver) error {
	c.mu.Lock()
	if c.stopped || c.ctx.Err() != nil {
		c.mu.Unlock()
		return errStopped
	}
	if c.nodes[name] {
		c.mu.Unlock()
		return fmt.Errorf("node %s is already registered", name)
	}
	c.nodes[name] = true
	c.mu.Unlock()

	l := map[string]string{
		corev1.LabelHostname:   name,
		corev1.LabelOSStable:   runtime.GOOS,
		corev1.LabelArchStable: runtime.GOARCH,
	}
	for k, v := range labels {
		l[k] = v
	}
	ann := map[string]string{"node.alpha.kubernetes.io/ttl": "0"}
	if len(drivers) > 0 {
		ids := map[string]string{}
		for _, d := range drivers {
			ids[d.Name] = d.NodeID
		}
		b, _ := json.Marshal(ids)
		ann[nodeIDAnnotation] = string(b)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("4"),
		corev1.ResourceMemory:           resource.MustParse("8Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	now := metav1.Now()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l, Annotations: ann},
		Status: corev1.NodeStatus{
			Capacity:    res,
			Allocatable: res.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions:  nodeConditions(now, now),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: name},
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID: name, SystemUUID: name, BootID: name,
				KernelVersion: "cairn-e2e", OSImage: "cairn-e2e",
				ContainerRuntimeVersion: "fake://cairn-e2e",
				KubeletVersion:          kubeVersion,
				OperatingSystem:         runtime.GOOS,
				Architecture:            runtime.GOARCH,
			},
		},
	}
	created, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		c.forgetNode(name)
		return fmt.Errorf("create node %s: %w", name, err)
	}
	if err := c.renewLease(ctx, created); err != nil {
		c.forgetNode(name)
		return err
	}

	csiNode := &storagev1.CSINode{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: name, UID: created.UID,
			}},
		},
		Spec: storagev1.CSINodeSpec{Drivers: drivers},
	}
	if csiNode.Spec.Drivers == nil {
		csiNode.Spec.Drivers = []storagev1.CSINodeDriver{}
	}
	if _, err := c.client.StorageV1().CSINodes().Create(ctx, csiNode, metav1.CreateOptions{}); err != nil {
		c.forgetNode(name)
		return fmt.Errorf("create csinode %s: %w", name, err)
	}

	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return errStopped
	}
	c.wg.Add(1) // under mu: Stop sets stopped before it waits
	c.mu.Unlock()
	go c.heartbeat(created)

	// The TaintNodesByCondition admission plugin put the not-ready taint on
	// the new Node; the node lifecycle controller lifts it once it has seen
	// the node Ready.
	for {
		n, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && !hasTaint(n, corev1.TaintNodeNotReady) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s still tainted %s: %w", name, corev1.TaintNodeNotReady, ctx.Err())
		case <-c.ctx.Done():
			return errStopped
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) forgetNode(name string) {
	c.mu.Lock()
	delete(c.nodes, name)
	c.mu.Unlock()
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

func nodeConditions(transition, heartbeat metav1.Time) []corev1.NodeCondition {
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg,
			LastHeartbeatTime: heartbeat, LastTransitionTime: transition}
	}
	return []corev1.NodeCondition{
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
	}
}

// heartbeat renews the node's Lease and Ready condition until Stop.
func (c *Cluster) heartbeat(node *corev1.Node) {
	defer c.wg.Done()
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, heartbeatInterval)
		// Errors are retried at the next tick; a node that misses several
		// goes NotReady, which the test then notices.
		_ = c.renewLease(ctx, node)
		_ = c.postReady(ctx, node.Name)
		cancel()
	}
}

// renewLease creates or renews kube-node-lease/<node>, as the kubelet does.
func (c *Cluster) renewLease(ctx context.Context, node *corev1.Node) error {
	leases := c.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: node.Name, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(node.Name),
				LeaseDurationSeconds: ptr.To[int32](nodeLeaseDuration),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
	} else if err == nil {
		lease.Spec.RenewTime = &now
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("renew lease of node %s: %w", node.Name, err)
	}
	return nil
}

// postReady refreshes the heartbeat of the node's conditions (and puts
// them back to healthy if something changed them).
func (c *Cluster) postReady(ctx context.Context, name string) error {
	n, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	want := nodeConditions(now, now)
	for i, w := range want {
		for _, have := range n.Status.Conditions {
			if have.Type == w.Type && have.Status == w.Status {
				want[i].LastTransitionTime = have.LastTransitionTime
			}
		}
	}
	n.Status.Conditions = want
	_, err = c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}
