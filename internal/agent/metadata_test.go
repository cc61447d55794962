package agent

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/control/remote"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// serviceAccountRemote is a Remote that acts as ServiceAccount name of
// testNS, bound to a ClusterRole with the controller's rules for reading
// snapshots and nodes, plus rules.
func (f *fixture) serviceAccountRemote(name string, rules ...rbacv1.PolicyRule) *remote.Remote {
	f.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}
	if err := f.cl.Create(f.ctx, ns); err != nil && !strings.Contains(err.Error(), "already exists") {
		f.t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name}}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: append([]rbacv1.PolicyRule{
		{APIGroups: []string{"cairn.csi.dev"}, Resources: []string{"snapshots", "storagenodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
	}, rules...)}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: testNS, Name: name}},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}}
	for _, o := range []client.Object{sa, role, binding} {
		if err := f.cl.Create(f.ctx, o); err != nil {
			f.t.Fatal(err)
		}
	}
	tr := &authnv1.TokenRequest{}
	if err := f.cl.SubResource("token").Create(f.ctx, sa, tr); err != nil {
		f.t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(f.cfg)
	cfg.BearerToken = tr.Status.Token
	cl, err := client.New(cfg, client.Options{Scheme: kube.Scheme})
	if err != nil {
		f.t.Fatal(err)
	}
	return &remote.Remote{Client: cl, HeartbeatTimeout: 30 * time.Second, Poll: 50 * time.Millisecond}
}

// TestSnapshotMetadataThroughAgent reads a block volume's changed-block
// metadata through the controller's Remote, which asks the node's agent
// with its ServiceAccount's token.
func TestSnapshotMetadataThroughAgent(t *testing.T) {
	f := newFixture(t)
	vol, err := f.create("cbt", 64*mib, onlyNode(testNode), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = "" })
	if err != nil {
		t.Fatal(err)
	}
	write := func(off, n int64) {
		t.Helper()
		fh, err := os.OpenFile(filepath.Join(f.eng.Root(), "volumes", vol.ID, "data.img"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		if _, err := fh.WriteAt([]byte(strings.Repeat("c", int(n))), off); err != nil {
			t.Fatal(err)
		}
		fh.Sync()
	}
	write(5*mib, mib)
	base, err := f.remote.CreateSnapshot(f.ctx, "cbt-1", vol.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	write(20*mib, 64<<10)
	write(40*mib, 4096)
	target, err := f.remote.CreateSnapshot(f.ctx, "cbt-2", vol.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}

	ctrl := f.serviceAccountRemote("cairn-controller",
		rbacv1.PolicyRule{APIGroups: []string{"cairn.csi.dev"}, Resources: []string{"snapshots/metadata"}, Verbs: []string{"get"}},
		rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"selfsubjectreviews"}, Verbs: []string{"create"}})
	read := func(r *remote.Remote, q model.MetadataQuery) ([]model.MetadataChunk, error) {
		var out []model.MetadataChunk
		err := r.SnapshotMetadata(f.ctx, q, func(c model.MetadataChunk) error { out = append(out, c); return nil })
		return out, err
	}
	flat := func(cs []model.MetadataChunk) []model.BlockRange {
		var out []model.BlockRange
		for _, c := range cs {
			if c.CapacityBytes != 64*mib {
				t.Errorf("chunk capacity %d, want %d", c.CapacityBytes, 64*mib)
			}
			out = append(out, c.Ranges...)
		}
		return out
	}
	got, err := read(ctrl, model.MetadataQuery{SnapshotID: target.ID})
	want := []model.BlockRange{{Offset: 5 * mib, Length: mib}, {Offset: 20 * mib, Length: 64 << 10}, {Offset: 40 * mib, Length: 4096}}
	if err != nil || !reflect.DeepEqual(flat(got), want) {
		t.Fatalf("allocated: %v %v, want %v", flat(got), err, want)
	}
	got, err = read(ctrl, model.MetadataQuery{SnapshotID: target.ID, BaseSnapshotID: base.ID, MaxResults: 1})
	if err != nil || len(got) != 2 || !reflect.DeepEqual(flat(got), want[1:]) {
		t.Fatalf("delta in chunks of 1: %+v %v, want %v in 2 chunks", got, err, want[1:])
	}
	got, err = read(ctrl, model.MetadataQuery{SnapshotID: target.ID, BaseSnapshotID: base.ID, StartingOffset: 20*mib + 4096})
	if err != nil || !reflect.DeepEqual(flat(got), []model.BlockRange{{Offset: 20*mib + 4096, Length: 60 << 10}, want[2]}) {
		t.Fatalf("delta resumed inside a range: %v %v", flat(got), err)
	}

	// Refusals, each with its CSI kind.
	for what, c := range map[string]struct {
		r    *remote.Remote
		q    model.MetadataQuery
		kind model.Kind
		msg  string
	}{
		"unknown target":       {ctrl, model.MetadataQuery{SnapshotID: model.SnapshotIDForName("nope")}, model.ErrNotFound, "not found"},
		"base is the target":   {ctrl, model.MetadataQuery{SnapshotID: target.ID, BaseSnapshotID: target.ID}, model.ErrInvalidArgument, "itself"},
		"offset past the end":  {ctrl, model.MetadataQuery{SnapshotID: target.ID, StartingOffset: 65 * mib}, model.ErrOutOfRange, "starting_offset"},
		"not a ServiceAccount": {f.remote, model.MetadataQuery{SnapshotID: target.ID}, model.ErrFailedPrecondition, "not a ServiceAccount"},
		"no metadata permission": {f.serviceAccountRemote("stranger",
			rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"selfsubjectreviews"}, Verbs: []string{"create"}}),
			model.MetadataQuery{SnapshotID: target.ID}, model.ErrUnavailable, "may not get snapshots/metadata"},
	} {
		if _, err := read(c.r, c.q); model.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v with %q", what, err, c.kind, c.msg)
		}
	}

	// Without a token the agent answers 401, whatever the certificate.
	var sn cairnv1.StorageNode
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: testNode}, &sn); err != nil {
		t.Fatal(err)
	}
	stranger, _ := kube.NewIdentity("stranger")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: kube.PinnedClientTLS(stranger, testNode, sn.Status.Transfer.CertificateSHA256)}}
	// A valid token of the controller, but for another node's agent.
	other := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{kube.AgentAudience("node-b")}}}
	if err := f.cl.SubResource("token").Create(f.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "cairn-controller"}}, other); err != nil {
		t.Fatal(err)
	}
	for _, token := range []string{"", "Bearer not-a-token", "Bearer " + other.Status.Token, "Bearer " + strings.Repeat("x", 20<<10)} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+sn.Status.Transfer.Address+kube.MetadataPath(model.MetadataQuery{SnapshotID: target.ID}), nil)
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("token %.40q: HTTP %d, want 401", token, resp.StatusCode)
		}
	}

	// A deleted base: FAILED_PRECONDITION, the caller falls back to a full read.
	if err := f.remote.DeleteSnapshot(f.ctx, base.ID); err != nil {
		t.Fatal(err)
	}
	f.eventually(30*time.Second, func() error {
		_, err := read(ctrl, model.MetadataQuery{SnapshotID: target.ID, BaseSnapshotID: base.ID})
		if model.KindOf(err) != model.ErrFailedPrecondition {
			return fmt.Errorf("delta from a deleted base: %v, want FailedPrecondition", err)
		}
		return nil
	})
}
