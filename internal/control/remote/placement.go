package remote

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// nodeState is a StorageNode as placement sees it.
type nodeState struct {
	name      string
	available int64
	why       string // non-empty if the node can take nothing
}

func (r *Remote) nodes(ctx context.Context) (map[string]nodeState, error) {
	var list cairnv1.StorageNodeList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list storage nodes", err)
	}
	return nodeStates(list.Items, time.Now(), r.HeartbeatTimeout), nil
}

// nodeStates judges StorageNodes at now: a node whose agent has not
// reported within timeout (default 2 minutes) can take nothing.
func nodeStates(items []cairnv1.StorageNode, now time.Time, timeout time.Duration) map[string]nodeState {
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	out := map[string]nodeState{}
	for _, n := range items {
		s := nodeState{name: n.Name, available: n.Status.AvailableBytes}
		if age := now.Sub(n.Status.HeartbeatTime.Time); n.Status.HeartbeatTime.IsZero() || age > timeout {
			s.why = fmt.Sprintf("node agent silent for %s", age.Round(time.Second))
		}
		out[n.Name] = s
	}
	return out
}

// Capacity is the space a new volume can get on node; with no node, the
// most any node offers.
func (r *Remote) Capacity(ctx context.Context, node string) (int64, error) {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return 0, err
	}
	var best int64
	for _, n := range nodes {
		if n.why == "" && (node == "" || n.name == node) {
			best = max(best, n.available)
		}
	}
	return best, nil
}

// place picks the node for a new volume of size bytes (pickNode).
func (r *Remote) place(ctx context.Context, where model.Placement, size int64) (string, error) {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return "", err
	}
	return pickNode(nodes, where, size)
}

// pickNode picks the node for a new volume of size bytes: the first
// preferred node with room, else the allowed node with the most room (by
// name among equals); ResourceExhausted naming why each candidate
// refused when none has room.
func pickNode(nodes map[string]nodeState, where model.Placement, size int64) (string, error) {
	roomier := func(list []string) {
		sort.SliceStable(list, func(i, j int) bool { return nodes[list[i]].available > nodes[list[j]].available })
	}
	cands := where.Candidates()
	if len(where.Requisite) == 0 {
		var rest []string
		for name := range nodes {
			if !slices.Contains(cands, name) {
				rest = append(rest, name)
			}
		}
		sort.Strings(rest)
		roomier(rest)
		cands = append(cands, rest...)
	} else {
		roomier(cands[min(len(where.Preferred), len(cands)):])
	}
	var refusals []string
	for _, name := range cands {
		n, ok := nodes[name]
		switch {
		case !ok:
			refusals = append(refusals, name+": no Cairn node agent")
		case n.why != "":
			refusals = append(refusals, name+": "+n.why)
		case n.available < size:
			refusals = append(refusals, fmt.Sprintf("%s: %d bytes available", name, n.available))
		default:
			return name, nil
		}
	}
	if len(refusals) == 0 {
		return "", model.Errorf(model.ErrResourceExhausted, "no Cairn node is registered (is the node DaemonSet running?)")
	}
	return "", model.Errorf(model.ErrResourceExhausted, "no node can hold %d bytes (%s)", size, strings.Join(refusals, "; "))
}
