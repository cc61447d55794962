package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// startUI runs `cairn ui` with a kubeconfig and returns its URL.
func (e *env) startUI(name, kubeconfig string) (string, error) {
	cmd := exec.CommandContext(e.ctx, e.cairn, "ui", "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0")
	logf, err := os.Create(filepath.Join(e.logs, name+".log"))
	if err != nil {
		return "", err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	e.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if i := strings.Index(line, "http://"); i >= 0 && strings.HasPrefix(line, "Cairn UI on") {
				urls <- strings.Fields(line[i:])[0]
			}
		}
	}()
	select {
	case u := <-urls:
		return strings.TrimSuffix(u, "/"), nil
	case <-time.After(30 * time.Second):
		return "", errors.New("cairn ui printed no address")
	}
}

// browser is a headless Debian chromium driven by chromedp.
func (e *env) browser() (context.Context, context.CancelFunc, error) {
	path, err := exec.LookPath("chromium")
	if err != nil {
		return nil, nil, fmt.Errorf("chromium not installed (hack/install-deps.sh installs it): %w", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(filepath.Join(e.work, fmt.Sprintf("chromium-%d", time.Now().UnixNano()))),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(e.ctx, opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	return bctx, func() { cancelB(); cancelA() }, nil
}

// webUI drives `cairn ui` in headless Chromium: the dashboard shows the
// walkthrough's volumes; Snapshot on mysql-pvc's page makes a
// VolumeSnapshot that turns ready on the page without a reload; Restore
// makes a PVC that is Bound; Expand grows a PVC; a user whose RBAC forbids
// creating VolumeSnapshots sees the API's refusal and nothing is made.
// Screenshots go to docs/screenshots.
func (e *env) webUI() error {
	url, err := e.startUI("ui-admin", e.c.AdminKubeconfig())
	if err != nil {
		return err
	}
	ctx, cancel, err := e.browser()
	if err != nil {
		return err
	}
	defer cancel()
	shots := filepath.Join(e.root, "docs/screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		return err
	}
	// The browser starts with the first call, on the context without a
	// deadline; each step after it is bounded.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		return fmt.Errorf("start chromium: %w", err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer tcancel()
	shot := func(name string) error {
		b, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(shots, name), b, 0o644)
	}
	if err := chromedp.Do(tctx, chromedp.Navigate(url+"/"), chromedp.WaitVisible(css("#backup-health"))); err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	dash, err := chromedp.Run(tctx, chromedp.Text(css("main")))
	if err != nil {
		return err
	}
	if err := shot("ui-dashboard.png"); err != nil {
		return err
	}
	for _, want := range []string{"mysql-pvc", "mysql-restore-pvc", "mysql-clone-pvc", e.nodeName} {
		if !strings.Contains(dash, want) {
			return fmt.Errorf("the dashboard does not show %q:\n%s", want, dash)
		}
	}

	// Snapshot now, through the page's dialog; the row appears and turns
	// Ready by the page's own refresh (no navigation).
	before, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	err = chromedp.Do(tctx,
		chromedp.Navigate(url+"/volumes/"+appNS+"/mysql-pvc"),
		chromedp.WaitVisible(css(`button[data-open="dlg-snapshot"]`)),
		discard(chromedp.Evaluate[string](`window.__cairnNoReload = "still here"`)),
		chromedp.Click(css(`button[data-open="dlg-snapshot"]`)),
		chromedp.WaitVisible(css(`#dlg-snapshot button[type=submit]`)),
		chromedp.SetValue(css(`#dlg-snapshot select[name=class]`), "longhorn"),
		chromedp.Click(css(`#dlg-snapshot button[type=submit]`)),
		flashSays("VolumeSnapshot"),
	)
	if err != nil {
		return fmt.Errorf("snapshot now: %w", err)
	}
	known := map[string]bool{}
	for _, vs := range before.Items {
		known[vs.Name] = true
	}
	var made string
	if err := e.eventually(30*time.Second, func() error {
		after, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var news []string
		for _, vs := range after.Items {
			if !known[vs.Name] {
				news = append(news, vs.Name)
				if vs.Spec.VolumeSnapshotClassName == nil || *vs.Spec.VolumeSnapshotClassName != "longhorn" || *vs.Spec.Source.PersistentVolumeClaimName != "mysql-pvc" {
					return backoffStop(fmt.Errorf("snapshot now made %s of %v with class %v", vs.Name, vs.Spec.Source.PersistentVolumeClaimName, vs.Spec.VolumeSnapshotClassName))
				}
			}
		}
		if len(news) != 1 {
			return fmt.Errorf("snapshot now made %d VolumeSnapshots (%v)", len(news), news)
		}
		made = news[0]
		return nil
	}); err != nil {
		return err
	}
	readyRow := fmt.Sprintf(`#snapshot-table tr[data-snapshot="%s"] .state-Ready`, made)
	if err := chromedp.Do(tctx, chromedp.WaitVisible(css(readyRow))); err != nil {
		return fmt.Errorf("VolumeSnapshot %s never showed Ready on the page: %w", made, err)
	}
	still, err := chromedp.Run(tctx, chromedp.Evaluate[string](`window.__cairnNoReload || "reloaded"`))
	if err != nil {
		return err
	}
	if err := shot("ui-volume.png"); err != nil {
		return err
	}
	if still != "still here" {
		return errors.New("the page reloaded to show the new snapshot")
	}
	if err := e.waitSnapshotReady(made, gi); err != nil {
		return err
	}

	// Restore to a new PVC from that snapshot. The class binds at first
	// use: the test plays the scheduler's part (selected-node), as the
	// other steps do.
	if err := chromedp.Do(tctx,
		chromedp.Click(css(fmt.Sprintf(`#snapshot-table tr[data-snapshot="%s"] button[data-open="dlg-restore"]`, made))),
		chromedp.WaitVisible(css(`#dlg-restore input[name=newName]`)),
		chromedp.SetValue(css(`#dlg-restore input[name=newName]`), "ui-restore-pvc"),
		chromedp.Click(css(`#dlg-restore button[type=submit]`)),
		flashSays("ui-restore-pvc"),
	); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if p, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, "ui-restore-pvc", metav1.GetOptions{}); err != nil {
		return err
	} else if p.Spec.DataSource == nil || p.Spec.DataSource.Kind != "VolumeSnapshot" || p.Spec.DataSource.Name != made {
		return fmt.Errorf("ui-restore-pvc's data source %+v, want VolumeSnapshot %s", p.Spec.DataSource, made)
	}
	if err := e.bindAtFirstUse("ui-restore-pvc"); err != nil {
		return err
	}

	// Expand a PVC that is not staged (its growth needs no node).
	if err := chromedp.Do(tctx,
		chromedp.Navigate(url+"/volumes/"+appNS+"/mysql-backup-restore-pvc"),
		chromedp.WaitVisible(css(`button[data-open="dlg-expand"]`)),
		chromedp.Click(css(`button[data-open="dlg-expand"]`)),
		chromedp.SetValue(css(`#dlg-expand input[name=size]`), "2Gi"),
		chromedp.Click(css(`#dlg-expand button[type=submit]`)),
		flashSays("grow"),
	); err != nil {
		return fmt.Errorf("expand: %w", err)
	}
	if err := e.eventually(2*time.Minute, func() error {
		p, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, "mysql-backup-restore-pvc", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if q := p.Status.Capacity[corev1.ResourceStorage]; q.Value() != 2*gi {
			return fmt.Errorf("PVC capacity %s, want 2Gi", q.String())
		}
		return nil
	}); err != nil {
		return err
	}
	if _, err := chromedp.Run(tctx, chromedp.Poll[bool](`document.getElementById("pvc-size").textContent === "2.0 GiB"`)); err != nil {
		return fmt.Errorf("the page never showed the expanded size: %w", err)
	}

	// The volume list shows what mysql-pvc occupies on its node (the
	// agent's heartbeat reports it), and Verify on the backups page reads
	// one of its backups back: the row turns Verified by the page's own
	// refresh.
	used := fmt.Sprintf(`#volumes tr[data-pvc="%s/mysql-pvc"] td:nth-child(4)`, appNS)
	if err := chromedp.Do(tctx, chromedp.Navigate(url+"/volumes"), chromedp.WaitVisible(css(used))); err != nil {
		return fmt.Errorf("volume list: %w", err)
	}
	if u, err := chromedp.Run(tctx, chromedp.Text(css(used))); err != nil || !strings.HasSuffix(u, "iB") {
		return fmt.Errorf("mysql-pvc's used column says %q (%v), want a size", u, err)
	}
	verify := `table.backups tr:has(a[href$="/mysql-pvc"]) form[action$="/verify"] button`
	if err := chromedp.Do(tctx,
		chromedp.Navigate(url+"/backups"),
		chromedp.WaitVisible(css(verify)),
		chromedp.Click(css(verify)),
		flashSays("Verification of backup"),
		chromedp.WaitVisible(css(`table.backups tr:has(a[href$="/mysql-pvc"]) .verification .state-Verified`)),
	); err != nil {
		return fmt.Errorf("verify a backup of mysql-pvc: %w", err)
	}
	if err := shot("ui-backups.png"); err != nil {
		return err
	}

	// A viewer (get, list, watch only) is refused with the API's message.
	return e.viewerRefused(tctx)
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

// flashSays waits until the page's notice (not an error) mentions text.
func flashSays(text string) chromedp.Action[chromedp.Void] {
	return discard(chromedp.Poll[bool](fmt.Sprintf(`(function () { var n = document.querySelector("#flash .notice"); return !!n && n.textContent.includes(%q); })()`, text)))
}

// discard runs an action for its effect only.
func discard[T any](a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := a(ctx, t)
		return chromedp.Void{}, err
	}
}

// bindAtFirstUse annotates a PVC with the node, as the scheduler does for
// a pod's WaitForFirstConsumer PVC, and waits until it is Bound.
func (e *env) bindAtFirstUse(name string) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"volume.kubernetes.io/selected-node": e.nodeName}}})
	if _, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Patch(e.ctx, name, "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		return err
	}
	return e.eventually(2*time.Minute, func() error {
		p, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("PVC %s is %s", name, p.Status.Phase)
		}
		return nil
	})
}

func (e *env) viewerRefused(ctx context.Context) error {
	if _, err := e.kc.CoreV1().ServiceAccounts(appNS).Create(e.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ui-viewer"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := e.kc.RbacV1().ClusterRoles().Create(e.ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ui-viewer"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}}}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := e.kc.RbacV1().ClusterRoleBindings().Create(e.ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ui-viewer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "ui-viewer"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: appNS, Name: "ui-viewer"}}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	kc, err := e.c.ServiceAccountKubeconfig(e.ctx, appNS, "ui-viewer")
	if err != nil {
		return err
	}
	url, err := e.startUI("ui-viewer", kc)
	if err != nil {
		return err
	}
	before, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(url+"/volumes/"+appNS+"/mysql-pvc"),
		chromedp.WaitVisible(css(`button[data-open="dlg-snapshot"]`)),
		chromedp.Click(css(`button[data-open="dlg-snapshot"]`)),
		chromedp.WaitVisible(css(`#dlg-snapshot button[type=submit]`)),
		chromedp.Click(css(`#dlg-snapshot button[type=submit]`)),
		chromedp.WaitVisible(css(`#flash .error`)),
	); err != nil {
		return fmt.Errorf("viewer's snapshot: %w", err)
	}
	msg, err := chromedp.Run(ctx, chromedp.Text(css(`#flash .error`)))
	if err != nil {
		return err
	}
	if !strings.Contains(msg, "forbidden") || !strings.Contains(msg, "ui-viewer") {
		return fmt.Errorf("the viewer was told %q, want the API's Forbidden", msg)
	}
	after, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(after.Items) != len(before.Items) {
		return fmt.Errorf("a forbidden snapshot was made (%d VolumeSnapshots, were %d)", len(after.Items), len(before.Items))
	}
	fmt.Printf("e2e    viewer refused: %s\n", msg)
	return nil
}

// kubectlPlugin runs the real kubectl with the cairn binary on PATH as
// kubectl-cairn.
func (e *env) kubectlPlugin() error {
	bin := filepath.Join(e.work, "plugin-bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(e.cairn, filepath.Join(bin, "kubectl-cairn")); err != nil && !os.IsExist(err) {
		return err
	}
	kubectl := filepath.Join(e.root, ".tools/bin/kubectl")
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(e.ctx, kubectl, args...)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "KUBECONFIG="+e.c.AdminKubeconfig())
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	out, err := run("cairn", "volumes", "-n", appNS)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(out, "NAME ") || !strings.Contains(out, "mysql-pvc") || !strings.Contains(out, e.nodeName) {
		return fmt.Errorf("kubectl cairn volumes:\n%s", out)
	}
	fmt.Print(indent(out))
	out, err = run("cairn", "nodes")
	if err != nil {
		return err
	}
	if !strings.Contains(out, e.nodeName) || !strings.Contains(out, "reflink") {
		return fmt.Errorf("kubectl cairn nodes:\n%s", out)
	}
	out, err = run("cairn", "backups", "-A", "-o", "json")
	if err != nil {
		return err
	}
	var list struct {
		Items []struct{ Name, Handle string }
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) == 0 || !strings.HasPrefix(list.Items[0].Handle, "bs://") {
		return fmt.Errorf("kubectl cairn backups -o json (%v):\n%s", err, out)
	}
	if _, err := run("cairn", "snapshots", "-o", "yaml"); err != nil {
		return err
	}
	return nil
}
