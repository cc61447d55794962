package deploy_test

// Tests of Cairn's Kubernetes manifests: the Helm chart in helm/cairn is the
// source, hack/render-manifests.sh renders it into kustomize/base and some of
// examples/, and these tests check that the committed files are what the
// chart renders (TestKustomizeBaseMatchesChart), that every object decodes
// strictly into the Kubernetes API types and says what Cairn needs
// (TestManifestsDecode), and that the chart's values do what they claim
// (TestChartValues).
//
// The chart tests need Helm, built from source by hack/helm.sh on first use
// (several minutes cold, instant later). CAIRN_SKIP_HELM=1 skips them.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	namespace  = "cairn-system"
	driverName = "cairn.csi.dev"
	cairnGroup = "cairn.csi.dev"
	kubeletDir = "/var/lib/kubelet"
	dataRoot   = "/var/lib/cairn"
	pluginDir  = kubeletDir + "/plugins/" + driverName
)

// ---------------------------------------------------------------------------
// Loading manifests

// object is one decoded document of a manifest file.
type object struct {
	where string         // file (and document number), for messages
	kind  string         // kind of the document
	name  string         // metadata.name
	obj   runtime.Object // typed object; nil for Cairn's own custom resources
	raw   map[string]any // the document as generic JSON
}

// manifests is a set of decoded documents.
type manifests []object

func (ms manifests) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range ms {
		if o.kind == kind && o.name == name {
			return o
		}
	}
	t.Fatalf("no %s %q among %s", kind, name, ms.names())
	return object{}
}

func (ms manifests) ofKind(kind string) manifests {
	var out manifests
	for _, o := range ms {
		if o.kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (ms manifests) names() string {
	var s []string
	for _, o := range ms {
		s = append(s, o.kind+"/"+o.name)
	}
	return strings.Join(s, ", ")
}

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	utilruntime.Must(snapshotv1.AddToScheme(s))
	return s
}

// decodeStream decodes every document of a multi-document YAML stream.
// Built-in kinds, CRDs and snapshot kinds are decoded strictly (an unknown or
// duplicate field is an error); Cairn's custom resources stay generic and are
// checked against the CRDs by validateCR.
func decodeStream(where string, data []byte) (manifests, error) {
	scheme := newScheme()
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out manifests
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		at := fmt.Sprintf("%s#%d", where, i)
		js, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // only comments
		}
		var raw map[string]any
		if err := json.Unmarshal(js, &raw); err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		o := object{where: at, raw: raw}
		o.kind, _ = raw["kind"].(string)
		o.name = str(raw, "metadata", "name")
		if o.kind == "" || o.name == "" {
			return nil, fmt.Errorf("%s: document without kind or metadata.name", at)
		}
		apiVersion, _ := raw["apiVersion"].(string)
		if !strings.HasPrefix(apiVersion, cairnGroup+"/") {
			obj, _, err := strict.Decode(js, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("%s (%s %s): %w", at, o.kind, o.name, err)
			}
			o.obj = obj
		}
		out = append(out, o)
	}
}

// load decodes every YAML file of a folder (relative to deploy/), except
// kustomization.yaml.
func load(t *testing.T, dir string) manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no YAML files in %s", dir)
	}
	var all manifests
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := decodeStream(f, data)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			t.Errorf("%s holds no object", f)
		}
		all = append(all, ms...)
	}
	return all
}

// str returns the string at a path of nested maps, or "".
func str(m map[string]any, path ...string) string {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = mm[p]
	}
	s, _ := v.(string)
	return s
}

// ---------------------------------------------------------------------------
// Helm

// helmBinary builds Helm with hack/helm.sh (instant once built) and returns
// its path, or skips the test when CAIRN_SKIP_HELM=1.
func helmBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("CAIRN_SKIP_HELM") == "1" {
		t.Skip("CAIRN_SKIP_HELM=1: Helm is not built, so the chart is neither linted nor compared with deploy/kustomize/base")
	}
	cmd := exec.Command("bash", filepath.Join("..", "hack", "helm.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/helm.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	bin := lines[len(lines)-1]
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("hack/helm.sh printed %q: %v", bin, err)
	}
	return bin
}

// helmEnv keeps Helm away from the user's configuration and caches.
func helmEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
}

// helmTemplate renders the chart with a values file (none if values is "").
func helmTemplate(t *testing.T, helm, values string) ([]byte, error) {
	t.Helper()
	args := []string{"template", "cairn", filepath.Join("helm", "cairn"), "--namespace", namespace}
	if values != "" {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(values), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--values", f)
	}
	cmd := exec.Command(helm, args...)
	cmd.Env = helmEnv(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// TestKustomizeBaseMatchesChart renders the chart the way
// hack/render-manifests.sh does (by running it into a temporary folder) and
// checks that deploy/kustomize/base and the generated examples are exactly
// what is committed, then lints the chart.
func TestKustomizeBaseMatchesChart(t *testing.T) {
	helm := helmBinary(t)

	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join("..", "hack", "render-manifests.sh"), "--out", out)
	cmd.Env = append(helmEnv(t), "HELM="+helm)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/render-manifests.sh: %v\n%s", err, b)
	}

	const fix = "the committed manifests differ from the chart: run hack/render-manifests.sh and commit the result"
	rendered := func(sub string) []string {
		files, err := filepath.Glob(filepath.Join(out, sub, "*"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range files {
			names = append(names, filepath.Base(f))
		}
		return names
	}

	// The base is generated as a whole: same files, same bytes.
	base := rendered(filepath.Join("kustomize", "base"))
	committed, err := filepath.Glob(filepath.Join("kustomize", "base", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var committedNames []string
	for _, f := range committed {
		committedNames = append(committedNames, filepath.Base(f))
	}
	if !slices.Equal(base, committedNames) {
		t.Errorf("%s\nrendered files:  %v\ncommitted files: %v", fix, base, committedNames)
	}
	compare := func(sub string, names []string) {
		for _, n := range names {
			want, err := os.ReadFile(filepath.Join(out, sub, n))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(sub, n))
			if err != nil {
				t.Errorf("%s: %v", fix, err)
				continue
			}
			if d := firstDiff(string(got), string(want)); d != "" {
				t.Errorf("%s\n%s: %s", fix, filepath.Join("deploy", sub, n), d)
			}
		}
	}
	compare(filepath.Join("kustomize", "base"), base)
	examples := rendered("examples")
	if len(examples) < 3 {
		t.Errorf("the chart rendered only %v into examples", examples)
	}
	compare("examples", examples)

	t.Run("lint", func(t *testing.T) {
		for _, values := range []string{"", chartTestValues} {
			args := []string{"lint", "--strict", filepath.Join("helm", "cairn")}
			if values != "" {
				f := filepath.Join(t.TempDir(), "values.yaml")
				if err := os.WriteFile(f, []byte(values), 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--values", f)
			}
			cmd := exec.Command(helm, args...)
			cmd.Env = helmEnv(t)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, b)
			}
		}
	})
}

// firstDiff describes the first line where got and want differ, or "".
func firstDiff(got, want string) string {
	if got == want {
		return ""
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl || i >= len(g) || i >= len(w) {
			return fmt.Sprintf("line %d is\n\t%q\nthe chart renders\n\t%q", i+1, gl, wl)
		}
	}
	return "files differ"
}

// chartTestValues sets most values away from their defaults.
const chartTestValues = `
image:
  repository: registry.example.com/cairn
  tag: test
kubeletDir: /var/lib/k0s/kubelet/
dataRoot: /srv/cairn
logLevel: 4
controller:
  replicas: 3
  extraArgs: ["--kube-api-qps=50"]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions:
              - {key: node-role.kubernetes.io/control-plane, operator: Exists}
node:
  extraVolumes:
    - name: backups
      nfs: {server: nas.example.com, path: /export/cairn}
  extraVolumeMounts:
    - name: backups
      mountPath: /mnt/cairn-backups
storageClass:
  name: cairn-xfs
  isDefault: true
  fsType: xfs
  reclaimPolicy: Retain
snapshotClasses:
  classes:
    - name: cairn-nas
      isDefault: true
      deletionPolicy: Retain
      parameters: {type: backup, backupTarget: nas}
backupTargets:
  - name: nas
    url: file:///mnt/cairn-backups
  - name: s3
    url: s3://bucket/prefix?endpoint=minio.example:9000&region=us-east-1
    credentialsSecret: cairn-s3
    encryptionKeySecret: cairn-s3-key
protectionPolicies:
  - name: default
    schedule: "0 * * * *"
    timeZone: Europe/Berlin
    snapshotClassName: cairn-nas
    retain: 24
    selector: {matchLabels: {backup: hourly}}
`

// TestChartValues renders the chart with non-default values and checks that
// they land where they should, and that the values schema refuses bad ones.
func TestChartValues(t *testing.T) {
	helm := helmBinary(t)
	out, err := helmTemplate(t, helm, chartTestValues)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := decodeStream("helm template (test values)", out)
	if err != nil {
		t.Fatal(err)
	}
	crds := load(t, "crds")

	const k0s = "/var/lib/k0s/kubelet"
	ds := ms.get(t, "DaemonSet", "cairn-node").obj.(*appsv1.DaemonSet)
	spec := ds.Spec.Template.Spec
	checkPodSpec(t, "DaemonSet cairn-node", spec)
	node := container(t, spec, "cairn")
	if node.Image != "registry.example.com/cairn:test" {
		t.Errorf("node image %q", node.Image)
	}
	for _, a := range []string{"--data-root=/srv/cairn", "--v=4"} {
		if !slices.Contains(node.Args, a) {
			t.Errorf("cairn node args %v lack %s", node.Args, a)
		}
	}
	wantHostPaths := map[string]string{
		"plugin-dir":       k0s + "/plugins/" + driverName,
		"kubelet-dir":      k0s,
		"registration-dir": k0s + "/plugins_registry",
		"data-root":        "/srv/cairn",
	}
	for name, path := range wantHostPaths {
		v := volume(t, spec, name)
		if v.HostPath == nil || v.HostPath.Path != path {
			t.Errorf("volume %s: %+v, want hostPath %s", name, v.VolumeSource, path)
		}
	}
	if m := mount(t, node, "kubelet-dir"); m.MountPath != k0s {
		t.Errorf("kubelet dir mounted at %s, want %s", m.MountPath, k0s)
	}
	if m := mount(t, node, "backups"); m.MountPath != "/mnt/cairn-backups" {
		t.Errorf("extra volume mounted at %s", m.MountPath)
	}
	if v := volume(t, spec, "backups"); v.NFS == nil || v.NFS.Server != "nas.example.com" {
		t.Errorf("extra volume %+v", v.VolumeSource)
	}
	reg := container(t, spec, "node-driver-registrar")
	if want := "--kubelet-registration-path=" + k0s + "/plugins/" + driverName + "/csi.sock"; !slices.Contains(reg.Args, want) {
		t.Errorf("registrar args %v lack %s", reg.Args, want)
	}

	dep := ms.get(t, "Deployment", "cairn-controller").obj.(*appsv1.Deployment)
	checkPodSpec(t, "Deployment cairn-controller", dep.Spec.Template.Spec)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("controller replicas %v, want 3", dep.Spec.Replicas)
	}
	if a := dep.Spec.Template.Spec.Affinity; a == nil || a.NodeAffinity == nil || a.PodAntiAffinity != nil {
		t.Errorf("controller.affinity should replace the default affinity, got %+v", a)
	}
	if c := container(t, dep.Spec.Template.Spec, "cairn"); !slices.Contains(c.Args, "--kube-api-qps=50") {
		t.Errorf("controller args %v lack the extra argument", c.Args)
	}

	sc := ms.get(t, "StorageClass", "cairn-xfs").obj.(*storagev1.StorageClass)
	if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("StorageClass annotations %v: not the default class", sc.Annotations)
	}
	if sc.Parameters["csi.storage.k8s.io/fstype"] != "xfs" || sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Errorf("StorageClass %+v", sc)
	}
	if n := len(ms.ofKind("VolumeSnapshotClass")); n != 1 {
		t.Errorf("%d VolumeSnapshotClasses, want only the one in the values", n)
	}
	vsc := ms.get(t, "VolumeSnapshotClass", "cairn-nas").obj.(*snapshotv1.VolumeSnapshotClass)
	if vsc.Annotations["snapshot.storage.k8s.io/is-default-class"] != "true" || vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentRetain ||
		vsc.Parameters["type"] != "backup" || vsc.Parameters["backupTarget"] != "nas" {
		t.Errorf("VolumeSnapshotClass %+v", vsc)
	}

	nas := ms.get(t, "BackupTarget", "nas")
	s3 := ms.get(t, "BackupTarget", "s3")
	for _, bt := range []object{nas, s3} {
		if err := validateCR(crds, bt.raw); err != nil {
			t.Errorf("%s: %v", bt.where, err)
		}
	}
	if got := str(nas.raw, "spec", "url"); got != "file:///mnt/cairn-backups" {
		t.Errorf("BackupTarget nas url %q", got)
	}
	if _, ok := nas.raw["spec"].(map[string]any)["credentialsSecret"]; ok {
		t.Errorf("BackupTarget nas has a credentialsSecret: %v", nas.raw["spec"])
	}
	if got := str(s3.raw, "spec", "url"); got != "s3://bucket/prefix?endpoint=minio.example:9000&region=us-east-1" {
		t.Errorf("BackupTarget s3 url %q", got)
	}
	if got := str(s3.raw, "spec", "credentialsSecret"); got != "cairn-s3" {
		t.Errorf("BackupTarget s3 credentialsSecret %q", got)
	}
	if got := str(s3.raw, "spec", "encryptionKeySecret"); got != "cairn-s3-key" {
		t.Errorf("BackupTarget s3 encryptionKeySecret %q", got)
	}

	pp := ms.get(t, "ProtectionPolicy", "default")
	if err := validateCR(crds, pp.raw); err != nil {
		t.Errorf("%s: %v", pp.where, err)
	}
	if str(pp.raw, "spec", "schedule") != "0 * * * *" || str(pp.raw, "spec", "snapshotClassName") != "cairn-nas" || str(pp.raw, "spec", "timeZone") != "Europe/Berlin" {
		t.Errorf("ProtectionPolicy default: %v", pp.raw["spec"])
	}

	t.Run("schema", func(t *testing.T) {
		bad := map[string]string{
			"policy without retain":   "protectionPolicies: [{name: p, schedule: '@hourly', snapshotClassName: c}]\n",
			"policy misspelt field":   "protectionPolicies: [{name: p, schedule: '@hourly', snapshotClassName: c, retain: 1, keep: 2}]\n",
			"unknown fsType":          "storageClass: {fsType: btrfs}\n",
			"misspelt key":            "controler: {replicas: 1}\n",
			"backup class no target":  "snapshotClasses: {classes: [{name: b, parameters: {type: backup}}]}\n",
			"unknown snapshot type":   "snapshotClasses: {classes: [{name: b, parameters: {type: copy}}]}\n",
			"target with an http URL": "backupTargets: [{name: x, url: 'http://x'}]\n",
			"target without URL":      "backupTargets: [{name: x}]\n",
			"relative data root":      "dataRoot: var/lib/cairn\n",
			"sidecar image empty tag": "sidecars: {resizer: {image: {tag: ''}}}\n",
		}
		for name, values := range bad {
			if _, err := helmTemplate(t, helm, values); err == nil {
				t.Errorf("%s: helm template accepted %q", name, values)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// Content

// TestManifestsDecode decodes every object of deploy/kustomize/base,
// deploy/crds and deploy/examples and checks what Cairn relies on.
func TestManifestsDecode(t *testing.T) {
	base := load(t, filepath.Join("kustomize", "base"))
	crds := load(t, "crds")
	examples := load(t, "examples")

	t.Run("CSIDriver", func(t *testing.T) {
		d := base.get(t, "CSIDriver", driverName).obj.(*storagev1.CSIDriver)
		s := d.Spec
		if s.AttachRequired == nil || *s.AttachRequired {
			t.Errorf("attachRequired %v, want false", s.AttachRequired)
		}
		if s.PodInfoOnMount == nil || !*s.PodInfoOnMount {
			t.Errorf("podInfoOnMount %v, want true", s.PodInfoOnMount)
		}
		if s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy {
			t.Errorf("fsGroupPolicy %v, want File", s.FSGroupPolicy)
		}
		if s.StorageCapacity == nil || !*s.StorageCapacity {
			t.Errorf("storageCapacity %v, want true", s.StorageCapacity)
		}
		if !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
			t.Errorf("volumeLifecycleModes %v, want [Persistent]", s.VolumeLifecycleModes)
		}
		if s.RequiresRepublish == nil || *s.RequiresRepublish {
			t.Errorf("requiresRepublish %v, want false", s.RequiresRepublish)
		}
		if s.SELinuxMount == nil || !*s.SELinuxMount {
			t.Errorf("seLinuxMount %v, want true", s.SELinuxMount)
		}
	})

	t.Run("NodeDaemonSet", func(t *testing.T) {
		ds := base.get(t, "DaemonSet", "cairn-node").obj.(*appsv1.DaemonSet)
		spec := ds.Spec.Template.Spec
		checkPodSpec(t, "DaemonSet cairn-node", spec)
		if spec.ServiceAccountName != "cairn-node" || spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
			t.Errorf("serviceAccountName %q hostNetwork %v priorityClassName %q", spec.ServiceAccountName, spec.HostNetwork, spec.PriorityClassName)
		}
		if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool { return tol.Key == "" && tol.Operator == corev1.TolerationOpExists }) {
			t.Errorf("tolerations %v: the node plugin must tolerate every taint", spec.Tolerations)
		}
		if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
			t.Errorf("updateStrategy %v", ds.Spec.UpdateStrategy)
		}

		c := container(t, spec, "cairn")
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
			t.Errorf("cairn node container is not privileged: %+v", c.SecurityContext)
		}
		wantArgs := []string{"node", "--endpoint=unix:///csi/csi.sock", "--node-id=$(NODE_NAME)", "--data-root=" + dataRoot,
			"--namespace=$(POD_NAMESPACE)", "--http-endpoint=:9809", "--transfer-endpoint=:9810", "--cgroup-fs=/host/sys/fs/cgroup", "--v=2"}
		if !slices.Equal(c.Args, wantArgs) {
			t.Errorf("cairn node args\n\t%v\nwant\n\t%v", c.Args, wantArgs)
		}
		checkFieldEnv(t, c, "NODE_NAME", "spec.nodeName")
		checkFieldEnv(t, c, "POD_NAMESPACE", "metadata.namespace")
		checkHTTPProbe(t, c, c.LivenessProbe, "/healthz", 9809)

		bidi := corev1.MountPropagationBidirectional
		for _, m := range []struct {
			volume, path string
			propagation  *corev1.MountPropagationMode
			hostType     corev1.HostPathType
		}{
			{"plugin-dir", "/csi", nil, corev1.HostPathDirectoryOrCreate},
			{"kubelet-dir", kubeletDir, &bidi, corev1.HostPathDirectory},
			{"data-root", dataRoot, &bidi, corev1.HostPathDirectoryOrCreate},
			{"dev", "/dev", nil, corev1.HostPathDirectory},
		} {
			got := mount(t, c, m.volume)
			if got.MountPath != m.path {
				t.Errorf("%s mounted at %s, want %s", m.volume, got.MountPath, m.path)
			}
			if m.propagation != nil && (got.MountPropagation == nil || *got.MountPropagation != *m.propagation) {
				var have corev1.MountPropagationMode = "unset"
				if got.MountPropagation != nil {
					have = *got.MountPropagation
				}
				t.Errorf("%s mount propagation %s, want %s", m.volume, have, *m.propagation)
			}
			v := volume(t, spec, m.volume)
			if v.HostPath == nil || v.HostPath.Type == nil || *v.HostPath.Type != m.hostType {
				t.Errorf("volume %s: %+v, want hostPath of type %s", m.volume, v.VolumeSource, m.hostType)
			}
		}
		if v := volume(t, spec, "plugin-dir"); v.HostPath != nil && v.HostPath.Path != pluginDir {
			t.Errorf("plugin dir %s, want %s", v.HostPath.Path, pluginDir)
		}
		if v := volume(t, spec, "data-root"); v.HostPath != nil && v.HostPath.Path != dataRoot {
			t.Errorf("data root %s, want %s", v.HostPath.Path, dataRoot)
		}

		reg := container(t, spec, "node-driver-registrar")
		if !strings.Contains(reg.Image, "/csi-node-driver-registrar:") {
			t.Errorf("registrar image %q", reg.Image)
		}
		wantReg := []string{"--csi-address=/csi/csi.sock", "--kubelet-registration-path=" + pluginDir + "/csi.sock", "--http-endpoint=:9810", "--v=2"}
		if !slices.Equal(reg.Args, wantReg) {
			t.Errorf("registrar args\n\t%v\nwant\n\t%v", reg.Args, wantReg)
		}
		checkHTTPProbe(t, reg, reg.LivenessProbe, "/healthz", 9810)
		if m := mount(t, reg, "registration-dir"); m.MountPath != "/registration" {
			t.Errorf("registration dir mounted at %s", m.MountPath)
		}
		if v := volume(t, spec, "registration-dir"); v.HostPath == nil || v.HostPath.Path != kubeletDir+"/plugins_registry" {
			t.Errorf("registration dir %+v", v.VolumeSource)
		}
	})

	t.Run("ControllerDeployment", func(t *testing.T) {
		d := base.get(t, "Deployment", "cairn-controller").obj.(*appsv1.Deployment)
		spec := d.Spec.Template.Spec
		checkPodSpec(t, "Deployment cairn-controller", spec)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("replicas %v, want 2", d.Spec.Replicas)
		}
		if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
			t.Errorf("strategy %v", d.Spec.Strategy)
		}
		if spec.ServiceAccountName != "cairn-controller" {
			t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
		}
		if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 ||
			a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
			t.Errorf("affinity %+v: want preferred pod anti-affinity by hostname", a)
		}
		if s := spec.SecurityContext; s == nil || s.RunAsNonRoot == nil || !*s.RunAsNonRoot {
			t.Errorf("the controller pod should run as non-root: %+v", s)
		}
		var names []string
		for _, c := range spec.Containers {
			names = append(names, c.Name)
			if strings.Contains(c.Name, "attacher") || strings.Contains(c.Image, "attacher") {
				t.Errorf("container %s (%s): Cairn needs no attacher (attachRequired: false)", c.Name, c.Image)
			}
			if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
				t.Errorf("controller container %s is privileged", c.Name)
			}
		}
		if want := []string{"cairn", "csi-provisioner", "csi-resizer", "csi-snapshotter"}; !slices.Equal(names, want) {
			t.Errorf("containers %v, want %v", names, want)
		}

		c := container(t, spec, "cairn")
		if want := []string{"controller", "--endpoint=unix:///csi/csi.sock", "--http-endpoint=:9808", "--v=2"}; !slices.Equal(c.Args, want) {
			t.Errorf("cairn controller args %v, want %v", c.Args, want)
		}
		checkHTTPProbe(t, c, c.LivenessProbe, "/healthz", 9808)
		checkHTTPProbe(t, c, c.ReadinessProbe, "/healthz", 9808)

		p := container(t, spec, "csi-provisioner")
		for _, a := range []string{"--csi-address=/csi/csi.sock", "--leader-election", "--leader-election-namespace=$(POD_NAMESPACE)",
			"--feature-gates=Topology=true", "--strict-topology", "--immediate-topology=false", "--enable-capacity",
			"--capacity-ownerref-level=2", "--extra-create-metadata", "--default-fstype=ext4", "--http-endpoint=:8080"} {
			if !slices.Contains(p.Args, a) {
				t.Errorf("csi-provisioner args %v lack %s", p.Args, a)
			}
		}
		checkFieldEnv(t, p, "NAMESPACE", "metadata.namespace")
		checkFieldEnv(t, p, "POD_NAME", "metadata.name")
		checkFieldEnv(t, p, "POD_NAMESPACE", "metadata.namespace")
		checkHTTPProbe(t, p, p.LivenessProbe, "/healthz/leader-election", 8080)

		r := container(t, spec, "csi-resizer")
		for _, a := range []string{"--csi-address=/csi/csi.sock", "--leader-election", "--leader-election-namespace=$(POD_NAMESPACE)",
			"--handle-volume-inuse-error=false", "--http-endpoint=:8081"} {
			if !slices.Contains(r.Args, a) {
				t.Errorf("csi-resizer args %v lack %s", r.Args, a)
			}
		}
		checkHTTPProbe(t, r, r.LivenessProbe, "/healthz/leader-election", 8081)

		s := container(t, spec, "csi-snapshotter")
		for _, a := range []string{"--csi-address=/csi/csi.sock", "--leader-election", "--leader-election-namespace=$(POD_NAMESPACE)",
			"--extra-create-metadata", "--http-endpoint=:8082"} {
			if !slices.Contains(s.Args, a) {
				t.Errorf("csi-snapshotter args %v lack %s", s.Args, a)
			}
		}
		checkHTTPProbe(t, s, s.LivenessProbe, "/healthz/leader-election", 8082)

		if v := volume(t, spec, "socket-dir"); v.EmptyDir == nil {
			t.Errorf("socket-dir %+v, want an emptyDir", v.VolumeSource)
		}
		images := map[string]string{
			"csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.4.0",
			"csi-resizer":     "registry.k8s.io/sig-storage/csi-resizer:v2.3.0",
			"csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0",
			"cairn":           "ghcr.io/cairn-csi/cairn:0.1.0",
		}
		for name, image := range images {
			if c := container(t, spec, name); c.Image != image {
				t.Errorf("%s image %q, want %q", name, c.Image, image)
			}
		}
	})

	t.Run("RBAC", func(t *testing.T) {
		checkRBAC(t, base)
	})

	t.Run("Metadata", func(t *testing.T) {
		namespaced := map[string]bool{"ServiceAccount": true, "Role": true, "RoleBinding": true, "Deployment": true, "DaemonSet": true}
		for _, o := range base {
			labels, _ := o.raw["metadata"].(map[string]any)["labels"].(map[string]any)
			ns := str(o.raw, "metadata", "namespace")
			switch {
			case namespaced[o.kind] && ns != namespace:
				t.Errorf("%s %s: namespace %q, want %q", o.kind, o.name, ns, namespace)
			case !namespaced[o.kind] && ns != "":
				t.Errorf("%s %s is cluster-scoped but has namespace %q", o.kind, o.name, ns)
			}
			if labels["app.kubernetes.io/name"] != "cairn" || labels["app.kubernetes.io/part-of"] != "cairn" {
				t.Errorf("%s %s: labels %v lack app.kubernetes.io/name and part-of: cairn", o.kind, o.name, labels)
			}
			for _, helmOnly := range []string{"helm.sh/chart", "app.kubernetes.io/managed-by"} {
				if _, ok := labels[helmOnly]; ok {
					t.Errorf("%s %s keeps the Helm-only label %s", o.kind, o.name, helmOnly)
				}
			}
			for _, component := range []string{"controller", "node"} {
				if strings.HasPrefix(o.name, "cairn-"+component) && labels["app.kubernetes.io/component"] != component {
					t.Errorf("%s %s: component label %v, want %s", o.kind, o.name, labels["app.kubernetes.io/component"], component)
				}
			}
		}
		base.get(t, "Namespace", namespace)
		for _, o := range base {
			if o.kind == "StorageClass" || o.kind == "VolumeSnapshotClass" || o.kind == "BackupTarget" {
				t.Errorf("%s %s belongs in deploy/examples, not in the base", o.kind, o.name)
			}
		}
	})

	t.Run("Kustomization", func(t *testing.T) {
		checkKustomization(t, filepath.Join("kustomize", "base"), []string{"../../crds"})
		checkKustomization(t, "crds", nil)
	})

	t.Run("CRDs", func(t *testing.T) {
		want := []string{"backuptargets", "groupsnapshots", "protectionpolicies", "snapshots", "standbyvolumes", "storagenodes", "volumes"}
		var got []string
		for _, o := range crds {
			crd, ok := o.obj.(*apiextensionsv1.CustomResourceDefinition)
			if !ok {
				t.Errorf("%s: %s in deploy/crds", o.where, o.kind)
				continue
			}
			got = append(got, crd.Spec.Names.Plural)
			scope := apiextensionsv1.ClusterScoped
			if crd.Spec.Names.Plural == "standbyvolumes" { // beside the PVCs that name them
				scope = apiextensionsv1.NamespaceScoped
			}
			if crd.Spec.Group != cairnGroup || crd.Spec.Scope != scope {
				t.Errorf("CRD %s: group %s scope %s", crd.Name, crd.Spec.Group, crd.Spec.Scope)
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("CRDs %v, want %v", got, want)
		}
		// The chart's copies are the same files.
		for _, f := range want {
			name := "cairn.csi.dev_" + f + ".yaml"
			a, err1 := os.ReadFile(filepath.Join("crds", name))
			b, err2 := os.ReadFile(filepath.Join("helm", "cairn", "crds", name))
			if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
				t.Errorf("deploy/helm/cairn/crds/%s differs from deploy/crds/%s (%v, %v): run hack/generate.sh", name, name, err1, err2)
			}
		}
	})

	t.Run("StorageClass", func(t *testing.T) {
		sc := examples.get(t, "StorageClass", "cairn").obj.(*storagev1.StorageClass)
		if sc.Provisioner != driverName {
			t.Errorf("provisioner %q", sc.Provisioner)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("allowVolumeExpansion %v, want true", sc.AllowVolumeExpansion)
		}
		if sc.Parameters["csi.storage.k8s.io/fstype"] != "ext4" {
			t.Errorf("parameters %v", sc.Parameters)
		}
		if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
			t.Errorf("volumeBindingMode %v, want WaitForFirstConsumer", sc.VolumeBindingMode)
		}
		if sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			t.Errorf("reclaimPolicy %v, want Delete", sc.ReclaimPolicy)
		}
		if _, ok := sc.Annotations["storageclass.kubernetes.io/is-default-class"]; ok {
			t.Errorf("the example StorageClass should not be the default one")
		}
	})

	t.Run("VolumeSnapshotClasses", func(t *testing.T) {
		want := map[string]map[string]string{
			"cairn-snap":   {"type": "snap"},
			"cairn-backup": {"type": "backup", "backupTarget": "default"},
		}
		for name, params := range want {
			c := examples.get(t, "VolumeSnapshotClass", name).obj.(*snapshotv1.VolumeSnapshotClass)
			if c.Driver != driverName || c.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete {
				t.Errorf("%s: driver %q deletionPolicy %q", name, c.Driver, c.DeletionPolicy)
			}
			if fmt.Sprint(c.Parameters) != fmt.Sprint(params) {
				t.Errorf("%s: parameters %v, want %v", name, c.Parameters, params)
			}
		}
	})

	t.Run("Examples", func(t *testing.T) {
		checkExamples(t, examples, crds)
	})
}

// TestCRValidation checks that validateCR, which the example and chart
// checks rely on, does refuse bad custom resources.
func TestCRValidation(t *testing.T) {
	crds := load(t, "crds")
	good := map[string]any{"apiVersion": "cairn.csi.dev/v1alpha1", "kind": "BackupTarget",
		"metadata": map[string]any{"name": "x"}, "spec": map[string]any{"url": "file:///b"}}
	if err := validateCR(crds, good); err != nil {
		t.Fatalf("a valid BackupTarget: %v", err)
	}
	for name, spec := range map[string]any{
		"bad url":       map[string]any{"url": "http://x"},
		"no url":        map[string]any{"credentialsSecret": "s"},
		"unknown field": map[string]any{"url": "file:///b", "secret": "s"},
		"wrong type":    map[string]any{"url": 3.0},
		"not an object": "file:///b",
	} {
		bad := map[string]any{"apiVersion": "cairn.csi.dev/v1alpha1", "kind": "BackupTarget",
			"metadata": map[string]any{"name": "x"}, "spec": spec}
		if err := validateCR(crds, bad); err == nil {
			t.Errorf("%s: accepted %v", name, spec)
		}
	}
	if err := validateCR(crds, map[string]any{"apiVersion": "cairn.csi.dev/v1", "kind": "BackupTarget"}); err == nil {
		t.Errorf("an unserved version was accepted")
	}
	policy := func(spec map[string]any) map[string]any {
		return map[string]any{"apiVersion": "cairn.csi.dev/v1alpha1", "kind": "ProtectionPolicy",
			"metadata": map[string]any{"name": "nightly"}, "spec": spec}
	}
	okPolicy := map[string]any{"schedule": "30 2 * * *", "timeZone": "Europe/Berlin", "snapshotClassName": "cairn-backup",
		"retain": 7.0, "maxAge": "168h", "concurrency": 2.0, "namespaces": []any{"shop"},
		"selector": map[string]any{"matchLabels": map[string]any{"backup": "nightly"}}, "suspend": false}
	if err := validateCR(crds, policy(okPolicy)); err != nil {
		t.Errorf("a valid ProtectionPolicy: %v", err)
	}
	// (bounds are checked by the API server: the e2e run creates one with retain 0)
	for name, spec := range map[string]map[string]any{
		"no schedule":   {"snapshotClassName": "c", "retain": 3.0},
		"no class":      {"schedule": "@hourly", "retain": 3.0},
		"unknown field": {"schedule": "@hourly", "snapshotClassName": "c", "retain": 3.0, "keep": 3.0},
	} {
		if err := validateCR(crds, policy(spec)); err == nil {
			t.Errorf("ProtectionPolicy %s: accepted %v", name, spec)
		}
	}
}

// ---------------------------------------------------------------------------
// Pod specs

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func volume(t *testing.T, spec corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %s", name)
	return corev1.Volume{}
}

func mount(t *testing.T, c corev1.Container, volume string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m
		}
	}
	t.Fatalf("container %s does not mount %s", c.Name, volume)
	return corev1.VolumeMount{}
}

func checkFieldEnv(t *testing.T, c corev1.Container, name, fieldPath string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != fieldPath {
				t.Errorf("container %s: env %s = %+v, want fieldRef %s", c.Name, name, e, fieldPath)
			}
			return
		}
	}
	t.Errorf("container %s has no env %s", c.Name, name)
}

// containerPort resolves a probe's port (name or number) in a container.
func containerPort(c corev1.Container, p corev1.Probe) (int32, bool) {
	if p.HTTPGet == nil {
		return 0, false
	}
	if p.HTTPGet.Port.StrVal == "" {
		return p.HTTPGet.Port.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.HTTPGet.Port.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func checkHTTPProbe(t *testing.T, c corev1.Container, p *corev1.Probe, path string, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %s: no HTTP probe (want GET %s on %d)", c.Name, path, port)
		return
	}
	got, ok := containerPort(c, *p)
	if p.HTTPGet.Path != path || !ok || got != port {
		t.Errorf("container %s: probe GET %s on %v (%d), want %s on %d", c.Name, p.HTTPGet.Path, p.HTTPGet.Port.String(), got, path, port)
	}
}

// checkPodSpec checks what every Cairn pod needs: each container has a
// liveness probe on the port its --http-endpoint serves, mounts only
// declared volumes, and reaches the CSI socket at /csi/csi.sock.
func checkPodSpec(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			t.Errorf("%s: volume %s declared twice", what, v.Name)
		}
		volumes[v.Name] = true
	}
	endpoint := regexp.MustCompile(`^--http-endpoint=:(\d+)$`)
	for _, c := range spec.Containers {
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("%s: container %s mounts undeclared volume %s", what, c.Name, m.Name)
			}
		}
		if c.LivenessProbe == nil {
			t.Errorf("%s: container %s has no liveness probe", what, c.Name)
			continue
		}
		port, ok := containerPort(c, *c.LivenessProbe)
		if !ok {
			t.Errorf("%s: container %s: liveness probe port %v is not one of its ports", what, c.Name, c.LivenessProbe.HTTPGet)
			continue
		}
		served := false
		for _, a := range c.Args {
			if m := endpoint.FindStringSubmatch(a); m != nil && m[1] == fmt.Sprint(port) {
				served = true
			}
		}
		if !served {
			t.Errorf("%s: container %s probes port %d but its args %v serve no --http-endpoint there", what, c.Name, port, c.Args)
		}
		socket := slices.Contains(c.Args, "--csi-address=/csi/csi.sock") || slices.Contains(c.Args, "--endpoint=unix:///csi/csi.sock")
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/csi" })
		if !socket || !mounted {
			t.Errorf("%s: container %s does not reach the CSI socket at /csi/csi.sock (args %v)", what, c.Name, c.Args)
		}
	}
}

// ---------------------------------------------------------------------------
// RBAC

// permissions expands rules into "group/resource verb" strings ("" is the
// core group).
func permissions(t *testing.T, what string, rules []rbacv1.PolicyRule) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, r := range rules {
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("%s: unexpected rule %+v", what, r)
		}
		// A rule narrowed to names reads "group/resource[name+name]".
		names := ""
		if len(r.ResourceNames) > 0 {
			names = "[" + strings.Join(r.ResourceNames, "+") + "]"
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				res += names
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("%s: wildcard in rule %+v", what, r)
					}
					out[g+"/"+res+" "+v] = true
				}
			}
		}
	}
	return out
}

// grants expands "group/res1,res2: verb1,verb2" lines into permissions.
func grants(lines ...string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lines {
		what, verbs, _ := strings.Cut(l, ": ")
		groups, resources, _ := strings.Cut(what, "/")
		for _, g := range strings.Split(groups, "|") {
			for _, r := range strings.Split(resources, ",") {
				for _, v := range strings.Split(verbs, ",") {
					out[g+"/"+r+" "+v] = true
				}
			}
		}
	}
	return out
}

const (
	read        = "get,list,watch"
	readWrite   = "get,list,watch,update,patch"
	events      = "|events.k8s.io/events: get,list,watch,create,update,patch"
	crdGroup    = "cairn.csi.dev"
	snapGroup   = "snapshot.storage.k8s.io"
	groupGroup  = "groupsnapshot.storage.k8s.io"
	storageGrp  = "storage.k8s.io"
	leaderVerbs = "get,watch,list,delete,update,create"
)

// The exact permissions of each role: least privilege is checked both ways,
// a missing permission breaks a component and an extra one needs a reason.
var wantPermissions = map[string]map[string]bool{
	"ClusterRole/cairn-controller": grants(
		events,
		// csi-provisioner
		"/persistentvolumes: get,list,watch,create,patch,delete",
		"/persistentvolumeclaims: get,list,watch,update",
		storageGrp+"/storageclasses,csinodes,volumeattachments,volumeattributesclasses: "+read,
		"/nodes: "+read,
		snapGroup+"/volumesnapshots: get,list,watch,update",
		snapGroup+"/volumesnapshotcontents: get,list",
		// csi-resizer
		"/persistentvolumes: patch",
		"/persistentvolumeclaims/status: patch",
		"/pods: list,watch",
		// csi-snapshotter
		snapGroup+"/volumesnapshotclasses: "+read,
		snapGroup+"/volumesnapshotcontents: "+readWrite,
		snapGroup+"/volumesnapshotcontents/status: update,patch",
		groupGroup+"/volumegroupsnapshotclasses: "+read,
		groupGroup+"/volumegroupsnapshotcontents: "+readWrite,
		groupGroup+"/volumegroupsnapshotcontents/status: update,patch",
		// cairn controller
		crdGroup+"/volumes,snapshots,groupsnapshots: get,list,watch,create,update,patch,delete",
		crdGroup+"/storagenodes,backuptargets: "+read,
		// changed-block metadata from the agents: what they authorize, and
		// the controller finding its own ServiceAccount
		crdGroup+"/snapshots/metadata: get",
		"authentication.k8s.io/selfsubjectreviews: create",
		// protection policies
		crdGroup+"/protectionpolicies: list",
		crdGroup+"/protectionpolicies/status: patch",
		snapGroup+"/volumesnapshots: create,delete",
		// standby volumes: placement, populating PVCs, their PVs
		crdGroup+"/standbyvolumes: get,list,watch,patch",
		crdGroup+"/standbyvolumes/status: patch",
	),
	"Role/cairn-controller": grants(
		"coordination.k8s.io/leases: "+leaderVerbs,
		storageGrp+"/csistoragecapacities: get,list,watch,create,update,patch,delete",
		"/pods: get",
		"apps/replicasets: get",
		// its own token for the agents (changed-block metadata)
		"/serviceaccounts/token[cairn-controller]: create",
	),
	"ClusterRole/cairn-node": grants(
		crdGroup+"/volumes,snapshots,groupsnapshots: "+readWrite,
		crdGroup+"/volumes,snapshots,groupsnapshots: create", // group members; re-created from the data root
		crdGroup+"/volumes/status,snapshots/status,groupsnapshots/status: get,update,patch",
		crdGroup+"/storagenodes: get,list,watch,create,update,patch",
		crdGroup+"/storagenodes/status: get,update,patch",
		crdGroup+"/backuptargets: "+read,
		crdGroup+"/standbyvolumes: get,list,watch,patch",
		crdGroup+"/standbyvolumes/status: get,patch",
		"|events.k8s.io/events: create,patch",
		"/nodes: get",
		// who asks for changed-block metadata
		"authentication.k8s.io/tokenreviews: create",
		"authorization.k8s.io/subjectaccessreviews: create",
	),
	"Role/cairn-node": grants("/secrets: " + read),
}

func checkRBAC(t *testing.T, base manifests) {
	for _, sa := range []string{"cairn-controller", "cairn-node"} {
		base.get(t, "ServiceAccount", sa)
	}
	for key, want := range wantPermissions {
		kind, name, _ := strings.Cut(key, "/")
		var rules []rbacv1.PolicyRule
		switch r := base.get(t, kind, name).obj.(type) {
		case *rbacv1.ClusterRole:
			rules = r.Rules
		case *rbacv1.Role:
			rules = r.Rules
		}
		got := permissions(t, key, rules)
		var missing, extra []string
		for p := range want {
			if !got[p] {
				missing = append(missing, p)
			}
		}
		for p := range got {
			if !want[p] {
				extra = append(extra, p)
			}
		}
		sort.Strings(missing)
		sort.Strings(extra)
		if len(missing) > 0 {
			t.Errorf("%s lacks %v", key, missing)
		}
		if len(extra) > 0 {
			t.Errorf("%s grants more than expected: %v", key, extra)
		}
	}
	if n := len(base.ofKind("ClusterRole")) + len(base.ofKind("Role")); n != len(wantPermissions) {
		t.Errorf("%d roles, want %d", n, len(wantPermissions))
	}

	// Each binding gives its role to the component's ServiceAccount.
	for _, name := range []string{"cairn-controller", "cairn-node"} {
		crb := base.get(t, "ClusterRoleBinding", name).obj.(*rbacv1.ClusterRoleBinding)
		rb := base.get(t, "RoleBinding", name).obj.(*rbacv1.RoleBinding)
		for _, b := range []struct {
			kind     string
			ref      rbacv1.RoleRef
			subjects []rbacv1.Subject
		}{{"ClusterRole", crb.RoleRef, crb.Subjects}, {"Role", rb.RoleRef, rb.Subjects}} {
			if b.ref.Kind != b.kind || b.ref.Name != name || b.ref.APIGroup != rbacv1.GroupName {
				t.Errorf("%s binding %s: roleRef %+v", b.kind, name, b.ref)
			}
			want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: namespace}}
			if !slices.Equal(b.subjects, want) {
				t.Errorf("%s binding %s: subjects %+v, want %+v", b.kind, name, b.subjects, want)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Kustomize

// checkKustomization checks that a kustomization lists every YAML file of
// its folder (and the extra resources given), and that they all exist.
func checkKustomization(t *testing.T, dir string, extra []string) {
	t.Helper()
	// deploy/crds names it Kustomization (a name kustomize knows) so that
	// `kubectl apply -f deploy/crds` finds only Kubernetes objects there.
	name := "kustomization.yaml"
	if _, err := os.Stat(filepath.Join(dir, "Kustomization")); err == nil {
		name = "Kustomization"
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := sigsyaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	if k.Kind != "Kustomization" || k.APIVersion != "kustomize.config.k8s.io/v1beta1" {
		t.Errorf("%s/kustomization.yaml: %s %s", dir, k.APIVersion, k.Kind)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	want := slices.Clone(extra)
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s/kustomization.yaml resources %v, want %v", dir, k.Resources, want)
	}
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		if err != nil {
			t.Errorf("%s/kustomization.yaml: %v", dir, err)
			continue
		}
		if st.IsDir() {
			_, err1 := os.Stat(filepath.Join(p, "kustomization.yaml"))
			_, err2 := os.Stat(filepath.Join(p, "Kustomization"))
			if err1 != nil && err2 != nil {
				t.Errorf("%s/kustomization.yaml: resource %s is a folder without a kustomization", dir, r)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Examples and custom resources

// checkExamples checks that the examples refer to each other consistently
// and that Cairn's custom resources among them match the CRDs.
func checkExamples(t *testing.T, examples, crds manifests) {
	classes := map[string]bool{}
	for _, o := range examples.ofKind("StorageClass") {
		classes[o.name] = true
	}
	snapClasses := map[string]*snapshotv1.VolumeSnapshotClass{}
	for _, o := range examples.ofKind("VolumeSnapshotClass") {
		snapClasses[o.name] = o.obj.(*snapshotv1.VolumeSnapshotClass)
	}
	targets := map[string]bool{}
	for _, o := range examples.ofKind("BackupTarget") {
		targets[o.name] = true
	}
	snapshots := map[string]bool{}
	for _, o := range examples.ofKind("VolumeSnapshot") {
		snapshots[o.name] = true
	}
	claims := map[string]bool{}
	for _, o := range examples.ofKind("PersistentVolumeClaim") {
		claims[o.name] = true
	}

	for _, o := range examples {
		if strings.HasPrefix(str(o.raw, "apiVersion"), cairnGroup+"/") {
			if err := validateCR(crds, o.raw); err != nil {
				t.Errorf("%s: %v", o.where, err)
			}
			if ns := str(o.raw, "metadata", "namespace"); ns != "" {
				t.Errorf("%s: %s is cluster-scoped, but has namespace %s", o.where, o.kind, ns)
			}
		}
		switch obj := o.obj.(type) {
		case *corev1.PersistentVolumeClaim:
			if sc := obj.Spec.StorageClassName; sc == nil || !classes[*sc] {
				t.Errorf("%s: PVC %s uses StorageClass %v, not an example one", o.where, o.name, sc)
			}
			if ds := obj.Spec.DataSource; ds != nil {
				switch ds.Kind {
				case "VolumeSnapshot":
					if !snapshots[ds.Name] {
						t.Errorf("%s: PVC %s restores unknown VolumeSnapshot %s", o.where, o.name, ds.Name)
					}
				case "PersistentVolumeClaim":
					if !claims[ds.Name] {
						t.Errorf("%s: PVC %s clones unknown PVC %s", o.where, o.name, ds.Name)
					}
				default:
					t.Errorf("%s: PVC %s has data source %+v", o.where, o.name, ds)
				}
			}
		case *snapshotv1.VolumeSnapshot:
			if c := obj.Spec.VolumeSnapshotClassName; c == nil || snapClasses[*c] == nil {
				t.Errorf("%s: VolumeSnapshot %s uses class %v, not an example one", o.where, o.name, c)
			}
		case *snapshotv1.VolumeSnapshotContent:
			if obj.Spec.Driver != driverName || obj.Spec.Source.SnapshotHandle == nil ||
				!regexp.MustCompile(`^bs://[^/]+/v-[0-9a-f]{32}/b-[0-9a-f]{32}$`).MatchString(*obj.Spec.Source.SnapshotHandle) {
				t.Errorf("%s: VolumeSnapshotContent %s: driver %q handle %v", o.where, o.name, obj.Spec.Driver, obj.Spec.Source.SnapshotHandle)
			}
		case *corev1.Secret:
			if obj.Namespace != namespace {
				t.Errorf("%s: Secret %s in namespace %q: node agents read credentials from %s", o.where, o.name, obj.Namespace, namespace)
			}
			for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				if _, ok := obj.StringData[k]; !ok {
					t.Errorf("%s: Secret %s lacks %s", o.where, o.name, k)
				}
			}
		}
	}
	for name, c := range snapClasses {
		if c.Parameters["type"] == "backup" && !targets[c.Parameters["backupTarget"]] {
			t.Errorf("VolumeSnapshotClass %s backs up to %q, which no example BackupTarget defines", name, c.Parameters["backupTarget"])
		}
	}
	for _, o := range examples.ofKind("BackupTarget") {
		if s := str(o.raw, "spec", "credentialsSecret"); s != "" {
			if _, err := findObject(examples, "Secret", s); err != nil {
				t.Errorf("%s: BackupTarget %s: %v", o.where, o.name, err)
			}
		}
	}
}

func findObject(ms manifests, kind, name string) (object, error) {
	for _, o := range ms {
		if o.kind == kind && o.name == name {
			return o, nil
		}
	}
	return object{}, fmt.Errorf("no %s %q", kind, name)
}

// validateCR checks a Cairn custom resource against the schema of its CRD:
// the version is served, every field is declared, with the right type, and
// required fields and patterns hold (what the API server would check of
// these simple schemas).
func validateCR(crds manifests, cr map[string]any) error {
	group, version, _ := strings.Cut(str(cr, "apiVersion"), "/")
	kind := str(cr, "kind")
	for _, o := range crds {
		crd, ok := o.obj.(*apiextensionsv1.CustomResourceDefinition)
		if !ok || crd.Spec.Group != group || crd.Spec.Names.Kind != kind {
			continue
		}
		for _, v := range crd.Spec.Versions {
			if v.Name != version || !v.Served {
				continue
			}
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				return fmt.Errorf("CRD %s %s has no schema", crd.Name, version)
			}
			schema := *v.Schema.OpenAPIV3Schema
			body := map[string]any{}
			for k, val := range cr {
				if k != "metadata" {
					body[k] = val
				}
			}
			if errs := checkSchema(kind, schema, body); len(errs) > 0 {
				return errors.New(strings.Join(errs, "; "))
			}
			return nil
		}
		return fmt.Errorf("CRD %s serves no version %s", crd.Name, version)
	}
	return fmt.Errorf("no CRD for %s/%s %s", group, version, kind)
}

func checkSchema(path string, s apiextensionsv1.JSONSchemaProps, v any) []string {
	var errs []string
	switch s.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an object", path, v)}
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				errs = append(errs, fmt.Sprintf("%s.%s is required", path, r))
			}
		}
		for k, val := range m {
			switch p, ok := s.Properties[k]; {
			case ok:
				errs = append(errs, checkSchema(path+"."+k, p, val)...)
			case s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil:
				errs = append(errs, checkSchema(path+"."+k, *s.AdditionalProperties.Schema, val)...)
			case s.XPreserveUnknownFields != nil && *s.XPreserveUnknownFields:
			default:
				errs = append(errs, fmt.Sprintf("%s.%s: unknown field", path, k))
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an array", path, v)}
		}
		if s.Items != nil && s.Items.Schema != nil {
			for i, val := range a {
				errs = append(errs, checkSchema(fmt.Sprintf("%s[%d]", path, i), *s.Items.Schema, val)...)
			}
		}
	case "string":
		sv, ok := v.(string)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want a string", path, v)}
		}
		if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(sv) {
			errs = append(errs, fmt.Sprintf("%s: %q does not match %s", path, sv, s.Pattern))
		}
		if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e apiextensionsv1.JSON) bool { return string(e.Raw) == fmt.Sprintf("%q", sv) }) {
			errs = append(errs, fmt.Sprintf("%s: %q is not one of the allowed values", path, sv))
		}
	case "integer":
		if f, ok := v.(float64); !ok || f != float64(int64(f)) {
			errs = append(errs, fmt.Sprintf("%s: %v, want an integer", path, v))
		}
	case "number":
		if _, ok := v.(float64); !ok {
			errs = append(errs, fmt.Sprintf("%s: %v, want a number", path, v))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			errs = append(errs, fmt.Sprintf("%s: %v, want a boolean", path, v))
		}
	}
	return errs
}

// TestChartBuiltinRegistrar: node.registrar=builtin drops the
// node-driver-registrar sidecar and has cairn node register itself, with
// the socket path kubelet sees and the plugins_registry folder mounted.
func TestChartBuiltinRegistrar(t *testing.T) {
	helm := helmBinary(t)
	out, err := helmTemplate(t, helm, "kubeletDir: /var/lib/k0s/kubelet\nnode:\n  registrar: builtin\n")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := decodeStream("helm template (builtin registrar)", out)
	if err != nil {
		t.Fatal(err)
	}
	spec := ms.get(t, "DaemonSet", "cairn-node").obj.(*appsv1.DaemonSet).Spec.Template.Spec
	checkPodSpec(t, "DaemonSet cairn-node (builtin registrar)", spec)
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "cairn" {
		t.Fatalf("containers %d, want only cairn", len(spec.Containers))
	}
	node := spec.Containers[0]
	for _, a := range []string{"--registration-dir=/registration",
		"--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/" + driverName + "/csi.sock"} {
		if !slices.Contains(node.Args, a) {
			t.Errorf("cairn node args %v lack %s", node.Args, a)
		}
	}
	if m := mount(t, node, "registration-dir"); m.MountPath != "/registration" {
		t.Errorf("registration-dir mounted at %s", m.MountPath)
	}
	if v := volume(t, spec, "registration-dir"); v.HostPath == nil || v.HostPath.Path != "/var/lib/k0s/kubelet/plugins_registry" {
		t.Errorf("registration-dir volume %+v", v.VolumeSource)
	}
	if _, err := helmTemplate(t, helm, "node:\n  registrar: sidecar\n"); err == nil || !strings.Contains(err.Error(), "registrar") {
		t.Errorf("registrar: sidecar was accepted (err %v)", err)
	}
}

// The kustomize Component builtin-registrar turns the base's node pod into
// the chart's with node.registrar=builtin.
func TestKustomizeBuiltinRegistrarMatchesChart(t *testing.T) {
	kubectl, err := filepath.Abs("../.tools/bin/kubectl")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kubectl); err != nil {
		t.Skip("kubectl not built (hack/k8s-tools.sh)")
	}
	overlay := t.TempDir()
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(overlay, here)
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("resources: [%s/kustomize/base]\ncomponents: [%s/kustomize/builtin-registrar]\n", rel, rel)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "kustomize", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	got, err := decodeStream("kustomize base + builtin-registrar", out)
	if err != nil {
		t.Fatal(err)
	}
	chart, err := helmTemplate(t, helmBinary(t), "node:\n  registrar: builtin\n")
	if err != nil {
		t.Fatal(err)
	}
	want, err := decodeStream("helm template (builtin registrar)", chart)
	if err != nil {
		t.Fatal(err)
	}
	spec := func(ms manifests) string {
		b, err := json.MarshalIndent(ms.get(t, "DaemonSet", "cairn-node").obj.(*appsv1.DaemonSet).Spec.Template.Spec, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if g, w := spec(got), spec(want); g != w {
		t.Errorf("the node pod of base + builtin-registrar differs from the chart's with node.registrar=builtin: %s", firstDiff(g, w))
	}
}

// TestChartSnapshotMetadata renders snapshotMetadata.enabled: the
// csi-snapshot-metadata sidecar on the controller's socket with the init
// container's key pair, the Service in front of it and their RBAC.
func TestChartSnapshotMetadata(t *testing.T) {
	helm := helmBinary(t)
	out, err := helmTemplate(t, helm, "snapshotMetadata:\n  enabled: true\n  audience: backup-app\n  port: 7443\n")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := decodeStream("helm template (snapshot metadata)", out)
	if err != nil {
		t.Fatal(err)
	}
	spec := ms.get(t, "Deployment", "cairn-controller").obj.(*appsv1.Deployment).Spec.Template.Spec
	checkPodSpec(t, "Deployment cairn-controller (snapshot metadata)", spec)
	if len(spec.InitContainers) != 1 {
		t.Fatalf("init containers %d, want the setup", len(spec.InitContainers))
	}
	setup := spec.InitContainers[0]
	for _, a := range []string{"snapshot-metadata-setup", "--service=cairn-snapshot-metadata", "--port=7443", "--audience=backup-app", "--cert-dir=/tls", "--secret=cairn-snapshot-metadata-tls"} {
		if !slices.Contains(setup.Args, a) {
			t.Errorf("setup args %v lack %s", setup.Args, a)
		}
	}
	var side *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "csi-snapshot-metadata" {
			side = &spec.Containers[i]
		}
	}
	if side == nil {
		t.Fatal("no csi-snapshot-metadata container")
	}
	for _, a := range []string{"--csi-address=/csi/csi.sock", "--tls-cert=/tls/tls.crt", "--tls-key=/tls/tls.key", "--port=50051"} {
		if !slices.Contains(side.Args, a) {
			t.Errorf("sidecar args %v lack %s", side.Args, a)
		}
	}
	if m := mount(t, *side, "snapshot-metadata-tls"); m.MountPath != "/tls" || !m.ReadOnly {
		t.Errorf("sidecar's TLS mount %+v", m)
	}
	if m := mount(t, setup, "snapshot-metadata-tls"); m.MountPath != "/tls" {
		t.Errorf("setup's TLS mount %+v", m)
	}
	if v := volume(t, spec, "snapshot-metadata-tls"); v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Errorf("TLS volume %+v, want an emptyDir in memory", v.VolumeSource)
	}
	svc := ms.get(t, "Service", "cairn-snapshot-metadata").obj.(*corev1.Service)
	if p := svc.Spec.Ports; len(p) != 1 || p[0].Port != 7443 || p[0].TargetPort.StrVal != "snapshot-meta" {
		t.Errorf("service ports %+v", p)
	}
	cr := permissions(t, "ClusterRole/cairn-snapshot-metadata", ms.get(t, "ClusterRole", "cairn-snapshot-metadata").obj.(*rbacv1.ClusterRole).Rules)
	for _, p := range []string{"authentication.k8s.io/tokenreviews create", "authorization.k8s.io/subjectaccessreviews create",
		"cbt.storage.k8s.io/snapshotmetadataservices create", "cbt.storage.k8s.io/snapshotmetadataservices[cairn.csi.dev] get", "snapshot.storage.k8s.io/volumesnapshots get"} {
		if !cr[p] {
			t.Errorf("ClusterRole/cairn-snapshot-metadata lacks %s", p)
		}
	}
	role := permissions(t, "Role/cairn-snapshot-metadata", ms.get(t, "Role", "cairn-snapshot-metadata").obj.(*rbacv1.Role).Rules)
	if !role["/secrets[cairn-snapshot-metadata-tls] update"] || role["/secrets get"] {
		t.Errorf("Role/cairn-snapshot-metadata: %v, want the TLS Secret by name only", role)
	}
	// Off by default: none of it.
	out, err = helmTemplate(t, helm, "")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "snapshot-metadata") {
		t.Error("the default chart renders snapshot metadata objects")
	}
}

// TestChartUI renders ui.enabled: cairn ui --in-cluster behind the Service
// cairn-ui, with a ServiceAccount that no role is bound to (every API
// call is made with the user's token).
func TestChartUI(t *testing.T) {
	helm := helmBinary(t)
	off, err := helmTemplate(t, helm, "")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(off, []byte("name: cairn-ui")) {
		t.Error("the UI is rendered by default")
	}
	out, err := helmTemplate(t, helm, "ui:\n  enabled: true\n")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := decodeStream("helm template (ui)", out)
	if err != nil {
		t.Fatal(err)
	}
	spec := ms.get(t, "Deployment", "cairn-ui").obj.(*appsv1.Deployment).Spec.Template.Spec
	c := spec.Containers[0]
	if c.LivenessProbe == nil || c.ReadinessProbe == nil || c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("UI container: probes %v %v, security %+v", c.LivenessProbe, c.ReadinessProbe, c.SecurityContext)
	}
	if spec.ServiceAccountName != "cairn-ui" || !slices.Equal(spec.Containers[0].Args, []string{"ui", "--in-cluster", "--listen=:8080"}) {
		t.Errorf("UI pod: account %s, args %v", spec.ServiceAccountName, spec.Containers[0].Args)
	}
	ms.get(t, "ServiceAccount", "cairn-ui")
	if svc := ms.get(t, "Service", "cairn-ui").obj.(*corev1.Service); svc.Spec.Ports[0].Port != 80 {
		t.Errorf("Service ports %+v", svc.Spec.Ports)
	}
	for _, o := range ms {
		if b, ok := o.obj.(*rbacv1.ClusterRoleBinding); ok && slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Name == "cairn-ui" }) {
			t.Errorf("ClusterRoleBinding %s grants the UI's own account a role", b.Name)
		}
		if b, ok := o.obj.(*rbacv1.RoleBinding); ok && slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Name == "cairn-ui" }) {
			t.Errorf("RoleBinding %s grants the UI's own account a role", b.Name)
		}
	}
}
