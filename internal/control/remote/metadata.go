package remote

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Changed-block metadata (docs/CBT.md): the controller cannot read disks,
// so it relays the stream of the agent on the target snapshot's node
// (docs/FORMAT.md#changed-block-metadata-from-a-node), authenticated with
// a token for its own ServiceAccount.

var _ csi.MetadataBackend = (*Remote)(nil)

// agentCreds are the controller's credentials towards agents: a client
// certificate (the transfer listener asks every client for one) and a
// cached token per node (each node's agent has its own audience).
type agentCreds struct {
	mu     sync.Mutex
	ident  *kube.Identity
	tokens map[string]agentToken
}

type agentToken struct {
	token string
	renew time.Time
}

// SnapshotMetadata streams a local snapshot's allocated or changed ranges
// from its node's agent.
func (r *Remote) SnapshotMetadata(ctx context.Context, q model.MetadataQuery, emit func(model.MetadataChunk) error) error {
	target, err := r.readySnapshot(ctx, q.SnapshotID)
	if err != nil {
		return err
	}
	if q.BaseSnapshotID != "" {
		if err := r.checkBase(ctx, q.BaseSnapshotID, target); err != nil {
			return err
		}
	}
	node := target.Spec.NodeName
	var sn cairnv1.StorageNode
	if err := r.Client.Get(ctx, client.ObjectKey{Name: node}, &sn); err != nil {
		return apiError("storage node "+node, err)
	}
	t := sn.Status.Transfer
	if t == nil || t.Address == "" || t.CertificateSHA256 == "" {
		return model.Errorf(model.ErrUnavailable, "node %s's agent serves no metadata (no status.transfer: it needs --transfer-endpoint)", node)
	}
	ident, token, err := r.agentCredentials(ctx, node)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+t.Address+kube.MetadataPath(q), nil)
	if err != nil {
		return model.Errorf(model.ErrUnavailable, "metadata from node %s: %v", node, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", kube.MetadataContentType)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// An agent that stalls mid-stream fails the call.
			return &kube.IdleConn{Conn: c, Timeout: time.Minute}, nil
		},
		TLSClientConfig:       kube.PinnedClientTLS(ident, node, t.CertificateSHA256),
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: time.Minute,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return model.Errorf(model.ErrUnavailable, "metadata from node %s: %v", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		text := fmt.Sprintf("node %s: %s", node, strings.TrimSpace(string(msg)))
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			r.creds.forget(node)
			return model.Errorf(model.ErrUnavailable, "metadata refused by %s (the token is renewed on the next call)", text)
		case http.StatusForbidden:
			return model.Errorf(model.ErrUnavailable, "metadata refused by %s (the controller's ClusterRole needs get on snapshots/metadata in cairn.csi.dev)", text)
		}
		if err := model.FromReason(resp.Header.Get(reasonHeader), text); model.KindOf(err) != 0 {
			return err
		}
		return model.Errorf(model.ErrUnavailable, "metadata from node %s: HTTP %d: %s", node, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	if ct := resp.Header.Get("Content-Type"); ct != kube.MetadataContentType {
		return model.Errorf(model.ErrUnavailable, "metadata from node %s: content type %q, want %s", node, ct, kube.MetadataContentType)
	}
	// The capacity must be the snapshot's as its object records it: a
	// stream from somewhere else is refused.
	return kube.ReadMetadata(resp.Body, func(c model.MetadataChunk) error {
		if size := target.Status.SizeBytes; size > 0 && c.CapacityBytes != size {
			return model.Errorf(model.ErrUnavailable, "metadata from node %s: capacity %d, snapshot %s has %d bytes", node, c.CapacityBytes, target.Name, size)
		}
		return emit(c)
	})
}

// reasonHeader is the agents' header carrying a refusal's reason.
const reasonHeader = "Cairn-Reason"

// checkBase refuses a base the agent could not answer for: one no longer
// there is FailedPrecondition (spec v1.12: the caller falls back to the
// allocated ranges), one of another volume InvalidArgument.
func (r *Remote) checkBase(ctx context.Context, id string, target *cairnv1.Snapshot) error {
	if id == target.Name {
		return model.Errorf(model.ErrInvalidArgument, "base_snapshot_id: the target snapshot itself")
	}
	if !model.ValidSnapshotID(id) {
		return model.Errorf(model.ErrNotFound, "base snapshot %q not found: not a snapshot ID", id)
	}
	var b cairnv1.Snapshot
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &b); err != nil {
		if apierrors.IsNotFound(err) {
			return model.Errorf(model.ErrFailedPrecondition, "base snapshot %s no longer exists: ask GetMetadataAllocated for the whole volume", id)
		}
		return apiError("base snapshot "+id, err)
	}
	if b.Spec.Type != cairnv1.SnapshotLocal {
		return model.Errorf(model.ErrInvalidArgument, "base snapshot %s is not a local snapshot", id)
	}
	if !b.DeletionTimestamp.IsZero() {
		return model.Errorf(model.ErrFailedPrecondition, "base snapshot %s is being deleted: ask GetMetadataAllocated for the whole volume", id)
	}
	if b.Spec.SourceVolumeID != target.Spec.SourceVolumeID || b.Spec.NodeName != target.Spec.NodeName {
		return model.Errorf(model.ErrInvalidArgument, "base snapshot %s is of volume %s, the target %s of volume %s", id, b.Spec.SourceVolumeID, target.Name, target.Spec.SourceVolumeID)
	}
	return nil
}

// agentCredentials returns the client certificate and a token for node's
// agent audience, requested for the controller's own ServiceAccount (the
// API server tells which) and kept until 80% of its lifetime.
func (r *Remote) agentCredentials(ctx context.Context, node string) (*kube.Identity, string, error) {
	c := &r.creds
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ident == nil {
		id, err := kube.NewIdentity("cairn-controller")
		if err != nil {
			return nil, "", fmt.Errorf("client certificate: %w", err)
		}
		c.ident = id
		c.tokens = map[string]agentToken{}
	}
	now := time.Now()
	if t, ok := c.tokens[node]; ok && now.Before(t.renew) {
		return c.ident, t.token, nil
	}
	ssr := &authnv1.SelfSubjectReview{}
	if err := r.Client.Create(ctx, ssr); err != nil {
		return nil, "", apiError("who the controller is (SelfSubjectReview)", err)
	}
	user := ssr.Status.UserInfo.Username
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	ns, name, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || name == "" {
		return nil, "", model.Errorf(model.ErrFailedPrecondition, "the controller runs as %q, not a ServiceAccount: it cannot request a token for the node agents", user)
	}
	expiry := int64(3600)
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{kube.AgentAudience(node)}, ExpirationSeconds: &expiry}}
	sa := &corev1.ServiceAccount{}
	sa.Namespace, sa.Name = ns, name
	if err := r.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		return nil, "", apiError("token for node "+node+"'s agent (TokenRequest)", err)
	}
	if tr.Status.Token == "" {
		return nil, "", model.Errorf(model.ErrUnavailable, "token for node %s's agent: the API server returned none", node)
	}
	life := tr.Status.ExpirationTimestamp.Sub(now)
	if life <= 0 {
		life = time.Duration(expiry) * time.Second
	}
	c.tokens[node] = agentToken{token: tr.Status.Token, renew: now.Add(life * 8 / 10)}
	return c.ident, tr.Status.Token, nil
}

// forget drops node's cached token (its agent refused it).
func (c *agentCreds) forget(node string) {
	c.mu.Lock()
	delete(c.tokens, node)
	c.mu.Unlock()
}
