package ui

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

const driver = "cairn.csi.dev"

// uiEnv is a real kube-apiserver (envtest, binaries from hack/k8s-tools.sh)
// with Cairn's and the snapshot CRDs, one Cairn PVC bound to its PV and
// Volume, and the UI served over it as the admin.
type uiEnv struct {
	t    *testing.T
	ctx  context.Context
	cfg  *rest.Config
	c    client.Client
	srv  *httptest.Server
	http *http.Client
}

func repoRoot(t *testing.T) string {
	dir, _ := os.Getwd()
	for ; dir != "/"; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
	}
	t.Fatal("no go.mod above the test")
	return ""
}

func newUIEnv(t *testing.T) *uiEnv {
	root := repoRoot(t)
	bins := filepath.Join(root, ".tools/bin")
	if _, err := os.Stat(filepath.Join(bins, "kube-apiserver")); err != nil {
		t.Skip("kube-apiserver not built: run `make tools`")
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8").Output()
	if err != nil {
		t.Fatal(err)
	}
	snapCRDs := filepath.Join(strings.TrimSpace(string(out)), "config/crd")
	tenv := &envtest.Environment{BinaryAssetsDirectory: bins, ErrorIfCRDPathMissing: true,
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: []string{filepath.Join(root, "deploy/crds"), snapCRDs}}}
	cfg, err := tenv.Start()
	if err != nil {
		tenv.Stop()
		t.Fatalf("envtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	e := &uiEnv{t: t, ctx: ctx, cfg: cfg}
	t.Cleanup(func() {
		cancel()
		if e.srv != nil {
			e.srv.Close()
		}
		tenv.Stop()
	})
	if e.c, err = client.New(cfg, client.Options{Scheme: kube.Scheme}); err != nil {
		t.Fatal(err)
	}
	e.fixtures()
	e.serve(e.c)
	return e
}

func (e *uiEnv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// fixtures: class cairn, PVC default/mysql-pvc bound to PV pv-1 (volume
// v-1 on node-a), snapshot classes for snapshots and backups, a node.
func (e *uiEnv) fixtures() {
	e.must(e.c.Create(e.ctx, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "cairn"}, Provisioner: driver, AllowVolumeExpansion: ptr.To(true)}))
	e.must(e.c.Create(e.ctx, &cairnv1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: cairnv1.BackupTargetSpec{URL: "file:///backups"}}))
	e.must(e.c.Create(e.ctx, &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "cairn-snap"}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}))
	e.must(e.c.Create(e.ctx, &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "cairn-backup"}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
		Parameters: map[string]string{"type": "backup", "backupTarget": "default"}}))
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "mysql-pvc", Namespace: "default"}, Spec: corev1.PersistentVolumeClaimSpec{
		StorageClassName: ptr.To("cairn"), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeName: "pv-1",
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	e.must(e.c.Create(e.ctx, pvc))
	pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound, Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}
	e.must(e.c.Status().Update(e.ctx, pvc))
	e.must(e.c.Create(e.ctx, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-1"}, Spec: corev1.PersistentVolumeSpec{
		StorageClassName: "cairn", AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: "v-1"}},
		ClaimRef:               &corev1.ObjectReference{Namespace: "default", Name: "mysql-pvc", UID: pvc.UID}}}))
	vol := &cairnv1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v-1"}, Spec: cairnv1.VolumeSpec{Name: "pvc-1", NodeName: "node-a", RequiredBytes: 1 << 30}}
	e.must(e.c.Create(e.ctx, vol))
	vol.Status = cairnv1.VolumeStatus{Phase: cairnv1.PhaseReady, SizeBytes: 1 << 30, FsType: "ext4"}
	e.must(e.c.Status().Update(e.ctx, vol))
	sn := &cairnv1.StorageNode{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	e.must(e.c.Create(e.ctx, sn))
	sn.Status = cairnv1.StorageNodeStatus{CapacityBytes: 16 << 30, FreeBytes: 12 << 30, ReservedBytes: 1 << 30, AvailableBytes: 11 << 30,
		CloneMode: "reflink", HeartbeatTime: metav1.Now(), BackupTargets: []string{"default"}}
	e.must(e.c.Status().Update(e.ctx, sn))
}

func (e *uiEnv) serve(c client.Client) {
	s, err := New(Fixed{Client: c}, driver)
	e.must(err)
	e.srv = httptest.NewServer(s.Handler())
	jar, _ := cookiejar.New(nil)
	e.http = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *uiEnv) get(path string) (int, string) {
	e.t.Helper()
	resp, err := e.http.Get(e.srv.URL + path)
	e.must(err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// post sends a form as the page's script does; csrf "" sends none.
func (e *uiEnv) post(path string, form url.Values) (int, map[string]string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Cairn-Fetch", "1")
	resp, err := e.http.Do(req)
	e.must(err)
	defer resp.Body.Close()
	var out map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// token is the CSRF token the page embeds.
func (e *uiEnv) token() string {
	_, body := e.get("/volumes/default/mysql-pvc")
	i := strings.Index(body, `name="csrf" value="`)
	if i < 0 {
		e.t.Fatal("no CSRF token on the volume page")
	}
	rest := body[i+len(`name="csrf" value="`):]
	return rest[:strings.Index(rest, `"`)]
}

func TestPages(t *testing.T) {
	e := newUIEnv(t)
	for path, want := range map[string][]string{
		"/":                          {"Dashboard", "mysql-pvc", "node-a", "16.0 GiB"},
		"/volumes":                   {"mysql-pvc", "node-a", "ext4", "Ready"},
		"/volumes?q=nothing-matches": {"No Cairn volumes match"},
		"/volumes/default/mysql-pvc": {">Snapshot<", ">Back up<", ">Restore<", ">Clone<", ">Expand<", ">Delete<", "v-1", "cairn-backup"},
		"/nodes":                     {"node-a", "reflink", "default"},
		"/backups":                   {"Target default", "file:///backups"},
	} {
		code, body := e.get(path)
		for _, w := range want {
			if code != 200 || !strings.Contains(body, w) {
				t.Errorf("GET %s: %d, want %q in the page", path, code, w)
			}
		}
	}
	if code, _ := e.get("/volumes/default/nope"); code != http.StatusNotFound {
		t.Errorf("unknown PVC page: %d, want 404", code)
	}
}

func TestActions(t *testing.T) {
	e := newUIEnv(t)
	tok := e.token()
	// No token, a wrong token: refused, nothing made.
	for _, bad := range []string{"", "0000", strings.Repeat("ab", 32)} {
		if code, out := e.post("/volumes/default/mysql-pvc/snapshot", url.Values{"class": {"cairn-snap"}, "csrf": {bad}}); code != http.StatusForbidden || !strings.Contains(out["error"], "CSRF") {
			t.Errorf("CSRF token %q: %d %v", bad, code, out)
		}
	}
	var list snapv1.VolumeSnapshotList
	e.must(e.c.List(e.ctx, &list))
	if len(list.Items) != 0 {
		t.Fatalf("a refused action created %d VolumeSnapshots", len(list.Items))
	}
	// Snapshot now: a VolumeSnapshot of the PVC with the class, shown on
	// the page's live part.
	code, out := e.post("/volumes/default/mysql-pvc/snapshot", url.Values{"class": {"cairn-snap"}, "csrf": {tok}})
	if code != 200 || !strings.Contains(out["message"], "VolumeSnapshot") {
		t.Fatalf("snapshot: %d %v", code, out)
	}
	e.must(e.c.List(e.ctx, &list))
	if len(list.Items) != 1 || *list.Items[0].Spec.Source.PersistentVolumeClaimName != "mysql-pvc" || *list.Items[0].Spec.VolumeSnapshotClassName != "cairn-snap" {
		t.Fatalf("VolumeSnapshots after snapshot now: %+v", list.Items)
	}
	if _, body := e.get("/volumes/default/mysql-pvc/snapshots"); !strings.Contains(body, list.Items[0].Name) {
		t.Errorf("the snapshot table does not list %s", list.Items[0].Name)
	}
	// Expand: bad sizes refused naming the field; a larger one patches.
	for _, bad := range []string{"lots", "512Mi", "-1Gi"} {
		if code, out := e.post("/volumes/default/mysql-pvc/expand", url.Values{"size": {bad}, "csrf": {tok}}); code != http.StatusBadRequest || !strings.Contains(out["error"], "size") {
			t.Errorf("expand to %q: %d %v", bad, code, out)
		}
	}
	if code, out := e.post("/volumes/default/mysql-pvc/expand", url.Values{"size": {"2Gi"}, "csrf": {tok}}); code != 200 {
		t.Fatalf("expand: %d %v", code, out)
	}
	var pvc corev1.PersistentVolumeClaim
	e.must(e.c.Get(e.ctx, client.ObjectKey{Namespace: "default", Name: "mysql-pvc"}, &pvc))
	if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.String() != "2Gi" {
		t.Errorf("PVC request after expand: %s", q.String())
	}
	// Restore and clone: new PVCs with the data source, class and modes.
	if code, out := e.post("/volumes/default/mysql-pvc/restore", url.Values{"snapshot": {list.Items[0].Name}, "newName": {"restored"}, "csrf": {tok}}); code != 200 {
		t.Fatalf("restore: %d %v", code, out)
	}
	if code, out := e.post("/volumes/default/mysql-pvc/clone", url.Values{"newName": {"Not A Name"}, "csrf": {tok}}); code != http.StatusBadRequest || !strings.Contains(out["error"], "newName") {
		t.Errorf("clone to a bad name: %d %v", code, out)
	}
	if code, out := e.post("/volumes/default/mysql-pvc/clone", url.Values{"newName": {"cloned"}, "csrf": {tok}}); code != 200 {
		t.Fatalf("clone: %d %v", code, out)
	}
	for n, kind := range map[string]string{"restored": "VolumeSnapshot", "cloned": "PersistentVolumeClaim"} {
		var p corev1.PersistentVolumeClaim
		e.must(e.c.Get(e.ctx, client.ObjectKey{Namespace: "default", Name: n}, &p))
		if p.Spec.DataSource == nil || p.Spec.DataSource.Kind != kind || *p.Spec.StorageClassName != "cairn" {
			t.Errorf("PVC %s: %+v", n, p.Spec)
		}
	}
	// Delete the snapshot: only the one the page showed (its uid).
	if code, out := e.post("/snapshots/default/"+list.Items[0].Name+"/delete", url.Values{"csrf": {tok}, "uid": {"another"}}); code != http.StatusConflict {
		t.Errorf("delete of a snapshot the page did not show: %d %v", code, out)
	}
	if code, out := e.post("/snapshots/default/"+list.Items[0].Name+"/delete", url.Values{"csrf": {tok}, "uid": {string(list.Items[0].UID)}}); code != 200 {
		t.Fatalf("delete snapshot: %d %v", code, out)
	}
}

// A user whose RBAC forbids creating VolumeSnapshots sees the API's
// refusal, and nothing is created.
func TestActionsWithTheCallersIdentity(t *testing.T) {
	e := newUIEnv(t)
	e.must(e.c.Create(e.ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}}}}))
	e.must(e.c.Create(e.ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "viewer"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "viewer", APIGroup: "rbac.authorization.k8s.io"}}}))
	cfg := rest.CopyConfig(e.cfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "viewer"}
	viewer, err := client.New(cfg, client.Options{Scheme: kube.Scheme})
	e.must(err)
	e.srv.Close()
	e.serve(viewer)
	if code, body := e.get("/volumes"); code != 200 || !strings.Contains(body, "mysql-pvc") {
		t.Fatalf("the viewer's volume list: %d", code)
	}
	code, out := e.post("/volumes/default/mysql-pvc/snapshot", url.Values{"class": {"cairn-snap"}, "csrf": {e.token()}})
	if code != http.StatusForbidden || !strings.Contains(out["error"], "forbidden") || !strings.Contains(out["error"], "viewer") {
		t.Errorf("snapshot as viewer: %d %v, want the API's Forbidden", code, out)
	}
	var list snapv1.VolumeSnapshotList
	e.must(e.c.List(e.ctx, &list))
	if len(list.Items) != 0 {
		t.Errorf("a forbidden snapshot was created: %v", list.Items)
	}
}

// In-cluster mode: no token, no pages (the sign-in form); a
// ServiceAccount's token in the Authorization header, or pasted on
// /login, reads and acts as that account and nothing more.
func TestBearerTokens(t *testing.T) {
	e := newUIEnv(t)
	kc := kubernetes.NewForConfigOrDie(e.cfg)
	_, err := kc.CoreV1().ServiceAccounts("default").Create(e.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{})
	e.must(err)
	e.must(e.c.Create(e.ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}}}}))
	e.must(e.c.Create(e.ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "viewer"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "viewer"}}}))
	tr, err := kc.CoreV1().ServiceAccounts("default").CreateToken(e.ctx, "viewer", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	e.must(err)
	mapper, err := apiutil.NewDynamicRESTMapper(e.cfg, must(rest.HTTPClientFor(e.cfg)))
	e.must(err)
	s, err := New(&BearerTokens{Base: rest.AnonymousClientConfig(e.cfg), Mapper: mapper}, driver)
	e.must(err)
	e.srv.Close()
	e.srv = httptest.NewServer(s.Handler())

	if code, _ := e.get("/volumes"); code != http.StatusSeeOther {
		t.Errorf("no token: %d, want a redirect to /login", code)
	}
	if code, body := e.get("/login"); code != 200 || !strings.Contains(body, `name="token"`) {
		t.Errorf("login page: %d", code)
	}
	req, _ := http.NewRequest("GET", e.srv.URL+"/volumes", nil)
	req.Header.Set("Authorization", "Bearer "+tr.Status.Token)
	resp, err := e.http.Do(req)
	e.must(err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "mysql-pvc") {
		t.Fatalf("with the viewer's token: %d", resp.StatusCode)
	}
	// Sign in by the form: the cookie carries the token from then on.
	code, _ := e.postForm("/login", url.Values{"token": {tr.Status.Token}, "csrf": {e.csrfCookie()}})
	if code != http.StatusSeeOther {
		t.Fatalf("sign in: %d", code)
	}
	code, out := e.post("/volumes/default/mysql-pvc/snapshot", url.Values{"class": {"cairn-snap"}, "csrf": {e.csrfCookie()}})
	if code != http.StatusForbidden || !strings.Contains(out["error"], "system:serviceaccount:default:viewer") {
		t.Errorf("snapshot with the viewer's token: %d %v", code, out)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// csrfCookie is the token the server gave this client's cookie jar.
func (e *uiEnv) csrfCookie() string {
	u, _ := url.Parse(e.srv.URL)
	for _, c := range e.http.Jar.Cookies(u) {
		if c.Name == csrfCookie {
			return c.Value
		}
	}
	e.t.Fatal("no CSRF cookie")
	return ""
}

func (e *uiEnv) postForm(path string, form url.Values) (int, string) {
	e.t.Helper()
	resp, err := e.http.PostForm(e.srv.URL+path, form)
	e.must(err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Redirects after a form go only to volume pages; in local mode a Host
// other than the listener's loopback names is refused (DNS rebinding).
func TestRedirectsAndHosts(t *testing.T) {
	e := newUIEnv(t)
	tok := e.token()
	for back, want := range map[string]string{
		"/volumes/default/mysql-pvc": "/volumes/default/mysql-pvc?",
		"/volumes/../\\evil.example": "/volumes?",
		"//evil.example/volumes/a/b": "/volumes?",
	} {
		req, _ := http.NewRequest("POST", e.srv.URL+"/snapshots/default/nope/delete", strings.NewReader(url.Values{"csrf": {tok}, "back": {back}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := e.http.Do(req)
		e.must(err)
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, want) {
			t.Errorf("back %q: redirected to %q, want %s…", back, loc, want)
		}
	}
	s, err := New(Fixed{Client: e.c}, driver)
	e.must(err)
	s.Hosts = []string{"127.0.0.1:9"}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://evil.example:9/", nil)
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("a page for Host evil.example: %d, want 403", rec.Code)
	}
}

// The backups page lists Cairn's backup Snapshot objects per target, an
// import with no VolumeSnapshot too, with their verification; Verify sets
// the object's verify-request annotation, only for a committed backup and
// only for the object the page showed. The volume list shows what the
// volume occupies on its node.
func TestBackupsPageAndVerify(t *testing.T) {
	e := newUIEnv(t)
	var vol cairnv1.Volume
	e.must(e.c.Get(e.ctx, client.ObjectKey{Name: "v-1"}, &vol))
	vol.Status.AllocatedBytes = 300 << 20
	e.must(e.c.Status().Update(e.ctx, &vol))
	if _, body := e.get("/volumes?sort=-used"); !strings.Contains(body, "300.0 MiB") {
		t.Errorf("the volume list does not show the used bytes")
	}
	if _, body := e.get("/volumes/default/mysql-pvc"); !strings.Contains(body, "300.0 MiB on the node") {
		t.Errorf("the volume page does not show the used bytes")
	}

	handle := "bs://default/v-1/b-0123456789abcdef0123456789abcdef"
	mk := func(name, h string, ready bool, v *cairnv1.Verification) *cairnv1.Snapshot {
		s := &cairnv1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: cairnv1.SnapshotSpec{Type: cairnv1.SnapshotBackup, NodeName: "node-a", BackupTarget: "default", Handle: h,
			SourceClaim: &cairnv1.SourceClaim{Namespace: "shop", Name: "orders"}}}
		e.must(e.c.Create(e.ctx, s))
		s.Status = cairnv1.SnapshotStatus{SnapshotID: h, ReadyToUse: ready, SizeBytes: 1 << 30, Verification: v}
		if !ready {
			s.Status.Message = "uploading: 1 of 2 bytes, 50%"
		}
		e.must(e.c.Status().Update(e.ctx, s))
		return s
	}
	done := metav1.Now()
	ok := mk(kube.SnapshotObjectName(handle), handle, true, &cairnv1.Verification{Request: "r", Phase: cairnv1.VerifyOK, StartTime: &done, CompletionTime: &done, Blocks: 3, Message: "3 blocks read back and checked"})
	h2 := "bs://default/v-1/b-fedcba9876543210fedcba9876543210"
	pending := mk(kube.SnapshotObjectName(h2), h2, false, nil)
	for _, path := range []string{"/backups", "/backups/table"} {
		code, body := e.get(path)
		for _, w := range []string{"Target default", handle, h2, "shop/orders", "none (imported)", "3 blocks read back and checked", "50%", ">Verify<"} {
			if code != 200 || !strings.Contains(body, w) {
				t.Errorf("GET %s: %d, want %q in it", path, code, w)
			}
		}
		if n := strings.Count(body, `/verify"`); n != 1 {
			t.Errorf("GET %s: %d Verify forms, want one (only the committed backup)", path, n)
		}
	}

	tok := e.token()
	if code, out := e.post("/backups/"+ok.Name+"/verify", url.Values{"csrf": {tok}, "uid": {"another"}}); code != http.StatusConflict {
		t.Errorf("verify of an object the page did not show: %d %v", code, out)
	}
	if code, out := e.post("/backups/"+pending.Name+"/verify", url.Values{"csrf": {tok}, "uid": {string(pending.UID)}}); code != http.StatusBadRequest || !strings.Contains(out["error"], "not a committed backup") {
		t.Errorf("verify of an upload in progress: %d %v", code, out)
	}
	if code, out := e.post("/backups/"+ok.Name+"/verify", url.Values{"csrf": {""}, "uid": {string(ok.UID)}}); code != http.StatusForbidden {
		t.Errorf("verify without the CSRF token: %d %v", code, out)
	}
	var got cairnv1.Snapshot
	e.must(e.c.Get(e.ctx, client.ObjectKey{Name: ok.Name}, &got))
	if v := got.Annotations[cairnv1.VerifyRequestAnnotation]; v != "" {
		t.Fatalf("a refused verify set the annotation to %q", v)
	}
	code, out := e.post("/backups/"+ok.Name+"/verify", url.Values{"csrf": {tok}, "uid": {string(ok.UID)}})
	if code != 200 || !strings.Contains(out["message"], handle) {
		t.Fatalf("verify: %d %v", code, out)
	}
	e.must(e.c.Get(e.ctx, client.ObjectKey{Name: ok.Name}, &got))
	if v := got.Annotations[cairnv1.VerifyRequestAnnotation]; v == "" || len(v) > cairnv1.MaxVerifyValue {
		t.Errorf("verify-request annotation %q", v)
	}
}
