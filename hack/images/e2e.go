package main

// The images the upstream Kubernetes e2e suite (k8s.io/kubernetes v1.36.3,
// test/utils/image/manifest.go) runs in its "External Storage" specs, under
// the exact names the suite asks for, so no --kube-test-repo-list is needed
// and pods find them with the default pull policy (IfNotPresent; nothing is
// pulled because every tag is already in containerd):
//
//	e2e-agnhost.tar   registry.k8s.io/e2e-test-images/agnhost:2.63.0
//	                  busybox + /agnhost (static, from -agnhost; built by
//	                  hack/e2e-suite.sh) + /agnhost-2, /uploads and the
//	                  image's user/group (1000 user-defined-in-image, 50000
//	                  group-defined-in-image); Entrypoint ["/agnhost"],
//	                  Cmd ["pause"] like the real image; plus the nsenter
//	                  wrapper below
//	e2e-busybox.tar   registry.k8s.io/e2e-test-images/busybox:1.37.0-1
//	                  the busybox layer; Cmd ["sh"] (the suite's default
//	                  test image on Linux)
//	e2e-nginx.tar     registry.k8s.io/e2e-test-images/nginx:1.15-4
//	                  busybox, Cmd busybox httpd on :80 serving
//	                  /usr/share/nginx/html (storage only uses it with its own
//	                  command: the volumes suite's "should allow exec of
//	                  files on the volume")
//	e2e-glibc-dns-testing.tar
//	                  registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0
//	                  busybox, with this machine's glibc, dash as /bin/sh
//	                  and GNU dd as /bin/dd (multiVolume's concurrent-access
//	                  specs run it with /bin/sh -c and write with
//	                  dd oflag=nocache, which busybox dd lacks; busybox's sh
//	                  would run its own dd applet whatever PATH says)
//	e2e-pause.tar     registry.k8s.io/pause:3.10.2, the suite's pause image
//	                  (the sandbox image stays pause:3.10 from pause.tar)
//
// They are written after busybox.tar and pause.tar unless -e2e=false. The
// agnhost image needs the binary: by default .tools/bin/agnhost relative to
// the working folder (the repository root for `go run ./hack/images`); when
// that file is absent and -agnhost was not given, e2e-agnhost.tar is skipped
// with a note. See docs/E2E-SUITE.md.

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

const (
	E2EAgnhostRef   = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
	E2EBusyboxRef   = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	E2ENginxRef     = "registry.k8s.io/e2e-test-images/nginx:1.15-4"
	E2EGlibcDNSRef  = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0"
	E2EPauseRef     = "registry.k8s.io/pause:3.10.2"
	defaultAgnhost  = ".tools/bin/agnhost"
	e2eImagesPrefix = "e2e-"
)

var (
	e2eImagesFlag = flag.Bool("e2e", true, "also write the images of the Kubernetes e2e storage suite (e2e-*.tar)")
	agnhostFlag   = flag.String("agnhost", "", "static agnhost binary for e2e-agnhost.tar (default "+defaultAgnhost+" if present; hack/e2e-suite.sh builds it)")
)

// runAll is what main runs: the node's two images (run), then the e2e
// suite's images.
func runAll(out, busybox string) error {
	if err := run(out, busybox); err != nil {
		return err
	}
	if !*e2eImagesFlag {
		return nil
	}
	return e2eImages(out, busybox, *agnhostFlag)
}

// e2eImages writes the e2e-*.tar images into out. agnhost "" means
// defaultAgnhost if it exists, else no agnhost image.
func e2eImages(out, busybox, agnhost string) error {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	bbLayer, err := busyboxLayer(busybox)
	if err != nil {
		return err
	}
	base, err := layerFiles(bbLayer)
	if err != nil {
		return err
	}
	// with is the busybox layer plus extra files; an extra file replaces
	// the busybox entry of the same name (a folder both have stays one).
	with := func(extra ...file) ([]byte, error) {
		replaced := map[string]bool{}
		for _, f := range extra {
			replaced[f.name] = true
		}
		var files []file
		for _, f := range base {
			if !replaced[f.name] {
				files = append(files, f)
			}
		}
		return layer(append(files, extra...))
	}

	if err := writeImage(filepath.Join(out, e2eImagesPrefix+"busybox.tar"), E2EBusyboxRef, bbLayer,
		imageConfig{Env: env, Cmd: []string{"sh"}}); err != nil {
		return err
	}
	glibcFiles, err := glibcTools(map[string]string{"bin/sh": "/bin/dash", "bin/dd": "/bin/dd"})
	if err != nil {
		return err
	}
	glibc, err := with(glibcFiles...)
	if err != nil {
		return err
	}
	if err := writeImage(filepath.Join(out, e2eImagesPrefix+"glibc-dns-testing.tar"), E2EGlibcDNSRef, glibc,
		imageConfig{Env: env, Cmd: []string{"sh"}}); err != nil {
		return err
	}
	nginx, err := with(
		file{name: "usr/share", mode: 0o755, dir: true},
		file{name: "usr/share/nginx", mode: 0o755, dir: true},
		file{name: "usr/share/nginx/html", mode: 0o755, dir: true},
		file{name: "usr/share/nginx/html/index.html", mode: 0o644, data: []byte("<html><body>Welcome to nginx!</body></html>\n")},
	)
	if err != nil {
		return err
	}
	if err := writeImage(filepath.Join(out, e2eImagesPrefix+"nginx.tar"), E2ENginxRef, nginx, imageConfig{
		Env: env,
		Cmd: []string{"/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"},
	}); err != nil {
		return err
	}

	if err := writePause(filepath.Join(out, e2eImagesPrefix+"pause.tar"), E2EPauseRef); err != nil {
		return err
	}

	explicit := agnhost != ""
	if !explicit {
		agnhost = defaultAgnhost
	}
	bin, err := os.ReadFile(agnhost)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		fmt.Fprintf(os.Stderr, "images: no %s (run hack/e2e-suite.sh): %s%s not written\n", agnhost, e2eImagesPrefix, "agnhost.tar")
		return nil
	}
	if err != nil {
		return err
	}
	if err := checkStatic(agnhost); err != nil {
		return fmt.Errorf("%w (build it with CGO_ENABLED=0: hack/e2e-suite.sh)", err)
	}
	var etc []file
	for _, f := range base {
		switch f.name {
		case "etc/passwd":
			f.data = append(bytes.Clone(f.data), "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"...)
		case "etc/group":
			f.data = append(bytes.Clone(f.data), "user-defined-in-image:x:1000:user-defined-in-image\ngroup-defined-in-image:x:50000:user-defined-in-image\n"...)
		default:
			continue
		}
		etc = append(etc, f)
	}
	files := make([]file, 0, len(base)+8)
	for _, f := range base {
		if f.name != "etc/passwd" && f.name != "etc/group" {
			files = append(files, f)
		}
	}
	files = append(files, etc...)
	files = append(files,
		file{name: "agnhost", mode: 0o755, data: bin},
		file{name: "agnhost-2", mode: 0o777, link: "agnhost"},
		file{name: "uploads", mode: 0o755, dir: true},
		file{name: "home/user-defined-in-image", mode: 0o755, dir: true},
		file{name: "usr/local", mode: 0o755, dir: true},
		file{name: "usr/local/bin", mode: 0o755, dir: true},
		file{name: "usr/local/bin/nsenter", mode: 0o755, data: []byte(nsenterWrapper)},
	)
	agLayer, err := layer(files)
	if err != nil {
		return err
	}
	return writeImage(filepath.Join(out, e2eImagesPrefix+"agnhost.tar"), E2EAgnhostRef, agLayer, imageConfig{
		Env:        env,
		Entrypoint: []string{"/agnhost"},
		Cmd:        []string{"pause"},
	})
}

// nsenterWrapper comes first on the agnhost image's PATH. The suite's
// host-exec pods (privileged, host / at /rootfs) run
// `nsenter --mount=/rootfs/proc/1/ns/mnt -- sh -c CMD` to act on the node.
// On this machine PID 1 is the VM's init (process_api), whose namespace links
// even root may not open (EACCES), although everything else runs in that
// same initial mount namespace. Then, and only for exactly that call, the
// command runs chrooted into /rootfs (the host's root, bind-mounted at pod
// start), which shows it the host's files; anything else is busybox nsenter.
const nsenterWrapper = `#!/bin/sh
# hack/images/e2e.go: see nsenterWrapper there.
if [ "$1" = "--mount=/rootfs/proc/1/ns/mnt" ] && [ "$2" = "--" ] && [ -d /rootfs ] &&
	! /bin/busybox readlink /rootfs/proc/1/ns/mnt >/dev/null 2>&1; then
	shift 2
	exec /bin/busybox chroot /rootfs "$@"
fi
exec /bin/busybox nsenter "$@"
`

// glibcTools returns this machine's dynamically linked programs (image
// path -> host path) with the shared libraries ldd finds for them, at the
// same paths, and their folders.
func glibcTools(bins map[string]string) ([]file, error) {
	want := map[string]string{} // image path -> host path
	for img, host := range bins {
		want[img] = host
		out, err := exec.Command("ldd", host).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", host, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			var lib string
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				lib = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				lib = f[0] // the dynamic loader
			}
			if lib != "" {
				want[strings.TrimPrefix(path.Clean(lib), "/")] = lib
			}
		}
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	var files []file
	for _, n := range names {
		for d := path.Dir(n); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			files = append(files, file{name: d, mode: 0o755, dir: true})
		}
		data, err := os.ReadFile(want[n]) // through symbolic links
		if err != nil {
			return nil, err
		}
		files = append(files, file{name: n, mode: 0o755, data: data})
	}
	return files, nil
}

// layerFiles reads back a layer written by layer() as its list of files.
func layerFiles(layerTar []byte) ([]file, error) {
	var files []file
	tr := tar.NewReader(bytes.NewReader(layerTar))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		f := file{name: strings.TrimSuffix(h.Name, "/"), mode: h.Mode}
		switch h.Typeflag {
		case tar.TypeDir:
			f.dir = true
		case tar.TypeSymlink:
			f.link = h.Linkname
		case tar.TypeReg:
			if f.data, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("layer entry %s: unexpected type %c", h.Name, h.Typeflag)
		}
		files = append(files, f)
	}
}
