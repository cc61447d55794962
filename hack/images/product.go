package main

// The images Cairn ships (`make images`, `go run ./hack/images -product`):
//
//	cairn.tar               REGISTRY/cairn:TAG — /cairn (static, no fault
//	                        points) and the programs the node service runs,
//	                        with their shared libraries, all as files of
//	                        this machine's Debian packages at the installed
//	                        versions (see debs.go); Entrypoint ["/cairn"]
//	csi-provisioner.tar     REGISTRY/csi-provisioner:vX (hack/tools/provisioner)
//	csi-resizer.tar         REGISTRY/csi-resizer:vX     (hack/tools/resizer)
//	csi-snapshotter.tar     REGISTRY/csi-snapshotter:vX (hack/tools/snapshotter)
//	snapshot-controller.tar REGISTRY/snapshot-controller:vX
//	csi-snapshot-metadata.tar REGISTRY/csi-snapshot-metadata:vX (hack/tools/snapshotmetadata;
//	                        for the chart's snapshotMetadata.enabled)
//
// The sidecar images hold the static binary hack/k8s-tools.sh built in
// .tools/bin at /<name>, its entrypoint, and tagged with the upstream
// module's version. The same inputs (packages, sources, Go toolchain)
// give the same digests. See docs/IMAGES.md.

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

var (
	productFlag  = flag.Bool("product", false, "write Cairn's own images (cairn and the sidecars) instead of the test images")
	registryFlag = flag.String("registry", "ghcr.io/cairn-csi", "with -product: the registry and path every image name starts with")
	tagFlag      = flag.String("tag", "", "with -product: the cairn image's tag and version (default: the chart's appVersion)")
	binFlag      = flag.String("bin", ".tools/bin", "with -product: where hack/k8s-tools.sh put the sidecar binaries")
	debsFlag     = flag.String("debs", ".tools/debs", "with -product: cache folder of the downloaded Debian packages")
)

// nodePrograms are the programs the cairn image carries: what the node
// service runs itself (e2fsck, resize2fs, dumpe2fs) and what
// k8s.io/mount-utils runs for it (mount, umount, blkid, mkfs.*, fsck,
// xfs_growfs, xfs_io, blockdev, findmnt), plus losetup for people
// debugging a node.
var nodePrograms = []string{
	"usr/bin/mount", "usr/bin/umount", "usr/bin/findmnt",
	"usr/sbin/blkid", "usr/sbin/blockdev", "usr/sbin/fsck", "usr/sbin/losetup",
	"usr/sbin/mkfs.ext4", "usr/sbin/mke2fs", "usr/sbin/e2fsck", "usr/sbin/fsck.ext4",
	"usr/sbin/resize2fs", "usr/sbin/dumpe2fs",
	"usr/sbin/mkfs.xfs", "usr/sbin/xfs_growfs", "usr/sbin/xfs_io",
}

// sidecars: image name, tools module, the upstream module whose version
// tags the image.
var sidecars = []struct{ name, module, upstream string }{
	{"csi-provisioner", "provisioner", "github.com/kubernetes-csi/external-provisioner/v6"},
	{"csi-resizer", "resizer", "github.com/kubernetes-csi/external-resizer/v2"},
	{"csi-snapshotter", "snapshotter", "github.com/kubernetes-csi/external-snapshotter/v8"},
	{"snapshot-controller", "snapshotter", "github.com/kubernetes-csi/external-snapshotter/v8"},
	{"csi-snapshot-metadata", "snapshotmetadata", "github.com/kubernetes-csi/external-snapshot-metadata"},
}

const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// baseFiles are what every shipped image has besides its programs: the
// usrmerge links, the folders a container runtime mounts over, and users
// root and nonroot (65532, what the controller pod runs as).
func baseFiles() []file {
	return []file{
		{name: "bin", mode: 0o777, link: "usr/bin"},
		{name: "sbin", mode: 0o777, link: "usr/sbin"},
		{name: "lib", mode: 0o777, link: "usr/lib"},
		{name: "lib64", mode: 0o777, link: "usr/lib64"},
		{name: "dev", mode: 0o755, dir: true},
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\nnogroup:x:65534:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{name: "home", mode: 0o755, dir: true},
		{name: "home/nonroot", mode: 0o700, dir: true},
		{name: "proc", mode: 0o555, dir: true},
		{name: "root", mode: 0o700, dir: true},
		{name: "run", mode: 0o755, dir: true},
		{name: "sys", mode: 0o555, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/bin", mode: 0o755, dir: true},
		{name: "usr/lib", mode: 0o755, dir: true},
		{name: "usr/lib64", mode: 0o755, dir: true},
		{name: "usr/sbin", mode: 0o755, dir: true},
		{name: "var", mode: 0o755, dir: true},
		{name: "var/lib", mode: 0o755, dir: true},
	}
}

// productImages writes every shipped image into out and prints one line
// per image: file, reference, manifest digest, size.
func productImages(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	tag := *tagFlag
	if tag == "" {
		var err error
		if tag, err = chartAppVersion("deploy/helm/cairn/Chart.yaml"); err != nil {
			return err
		}
	}
	reg := strings.TrimSuffix(*registryFlag, "/")
	if err := cairnImage(filepath.Join(out, "cairn.tar"), reg+"/cairn:"+tag, tag); err != nil {
		return err
	}
	for _, s := range sidecars {
		version, err := moduleVersion(filepath.Join("hack/tools", s.module, "go.mod"), s.upstream)
		if err != nil {
			return err
		}
		bin, err := os.ReadFile(filepath.Join(*binFlag, s.name))
		if err != nil {
			return fmt.Errorf("%v (hack/k8s-tools.sh builds it)", err)
		}
		if err := checkStatic(filepath.Join(*binFlag, s.name)); err != nil {
			return err
		}
		files := append(baseFiles(), file{name: s.name, mode: 0o755, data: bin})
		l, err := layer(files)
		if err != nil {
			return err
		}
		if err := report(filepath.Join(out, s.name+".tar"), reg+"/"+s.name+":"+version, l, imageConfig{
			Env: []string{pathEnv}, Entrypoint: []string{"/" + s.name},
			Labels: map[string]string{"org.opencontainers.image.source": s.upstream, "org.opencontainers.image.version": version},
		}); err != nil {
			return err
		}
	}
	return nil
}

func report(dst, ref string, l []byte, cfg imageConfig) error {
	d, err := writeCompressedImage(dst, ref, l, cfg)
	if err != nil {
		return err
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return err
	}
	fmt.Printf("%-24s %-52s %s %5.1f MiB\n", filepath.Base(dst), ref, d, float64(fi.Size())/(1<<20))
	return nil
}

// cairnImage builds /cairn and writes the cairn image.
func cairnImage(dst, ref, version string) error {
	tmp, err := os.MkdirTemp("", "cairn-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "cairn")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid= -X github.com/cairn-csi/cairn/internal/csi.Version="+version, "-o", bin, "./cmd/cairn")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/cairn: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	r, err := newDebRoot(*debsFlag)
	if err != nil {
		return err
	}
	for _, p := range nodePrograms {
		if err := r.addProgram(p); err != nil {
			return err
		}
	}
	if err := r.addFile("e2fsprogs", "etc/mke2fs.conf"); err != nil {
		return err
	}
	bundle, err := caBundle(r)
	if err != nil {
		return err
	}
	files := baseFiles()
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.name] = true
	}
	for _, f := range r.selectedFiles() {
		if !seen[f.name] {
			seen[f.name] = true
			files = append(files, f)
		}
	}
	for _, f := range []file{
		{name: "cairn", mode: 0o755, data: data},
		{name: "etc/ssl", mode: 0o755, dir: true},
		{name: "etc/ssl/certs", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: bundle},
	} {
		if !seen[f.name] {
			files = append(files, f)
		}
	}
	l, err := layer(files)
	if err != nil {
		return err
	}
	return report(dst, ref, l, imageConfig{
		Env: []string{pathEnv}, Entrypoint: []string{"/cairn"},
		Labels: map[string]string{
			"org.opencontainers.image.source":  "https://github.com/cairn-csi/cairn",
			"org.opencontainers.image.version": version,
			"dev.cairn.debian-packages":        strings.Join(r.packageList(), " "),
		},
	})
}

// caBundle concatenates the Mozilla certificates of the ca-certificates
// package, sorted by name, into the bundle Go's crypto/x509 reads
// (update-ca-certificates does the same at install time).
func caBundle(r *debRoot) ([]byte, error) {
	if err := r.load("ca-certificates"); err != nil {
		return nil, err
	}
	var names []string
	for p, f := range r.files {
		if strings.HasPrefix(p, "usr/share/ca-certificates/mozilla/") && strings.HasSuffix(p, ".crt") && f.data != nil {
			names = append(names, p)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("ca-certificates has no certificates")
	}
	sort.Strings(names)
	var out []byte
	for _, n := range names {
		out = append(out, r.files[n].data...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	return out, nil
}

var appVersionRE = regexp.MustCompile(`(?m)^appVersion:\s*"?([^"\s]+)"?\s*$`)

func chartAppVersion(chart string) (string, error) {
	b, err := os.ReadFile(chart)
	if err != nil {
		return "", err
	}
	m := appVersionRE.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s: no appVersion", chart)
	}
	return string(m[1]), nil
}

// moduleVersion is the version of module mod that go.mod requires.
func moduleVersion(gomod, mod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(mod) + `\s+(v\S+)`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s does not require %s", gomod, mod)
	}
	return string(m[1]), nil
}
