// Command images writes the two container images a one-node test cluster
// needs without any registry, as OCI image-layout tarballs that
// `ctr -n k8s.io images import` takes:
//
//	busybox.tar  docker.io/library/busybox:1.36  /bin/busybox (static) and a
//	             symlink for each of its applets; Cmd ["sh"] like the real
//	             image
//	pause.tar    registry.k8s.io/pause:3.10      /pause, a tiny static Go
//	             program built here that sleeps until SIGTERM/SIGINT and
//	             reaps orphans (what the real pause does)
//
// Usage: go run ./hack/images -out DIR [-busybox /bin/busybox]
//
// The output is deterministic: every timestamp is the Unix epoch, owners
// are 0:0, entries are sorted, layers are uncompressed (so a layer's
// digest is its diff ID) and the pause binary is built with -trimpath and
// an empty build ID. Given the same busybox binary and Go toolchain, the
// tarballs are byte for byte the same. See docs/NODE.md.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

const (
	BusyboxRef = "docker.io/library/busybox:1.36"
	PauseRef   = "registry.k8s.io/pause:3.10"
)

// epoch is every timestamp in the output.
var epoch = time.Unix(0, 0).UTC()

// pauseSource is the sandbox's only process: PID 1 of the pod, it waits
// for SIGTERM or SIGINT and reaps any orphan that is re-parented to it.
const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
`

func main() {
	out := flag.String("out", "", "folder to write busybox.tar and pause.tar into (created)")
	bb := flag.String("busybox", "/bin/busybox", "a statically linked busybox binary")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *productFlag { // product.go
		if err := productImages(*out); err != nil {
			fmt.Fprintln(os.Stderr, "images:", err)
			os.Exit(1)
		}
		return
	}
	if err := runAll(*out, *bb); err != nil { // runAll: run, then the e2e suite images (e2e.go)
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(out, busybox string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	bbLayer, err := busyboxLayer(busybox)
	if err != nil {
		return err
	}
	if err := writeImage(filepath.Join(out, "busybox.tar"), BusyboxRef, bbLayer, imageConfig{
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"sh"},
	}); err != nil {
		return err
	}
	return writePause(filepath.Join(out, "pause.tar"), PauseRef)
}

// writePause writes an image named ref whose only file is the static pause
// program, its entrypoint, to path.
func writePause(path, ref string) error {
	pause, err := buildPause()
	if err != nil {
		return err
	}
	pauseLayer, err := layer([]file{{name: "pause", mode: 0o755, data: pause}})
	if err != nil {
		return err
	}
	return writeImage(path, ref, pauseLayer, imageConfig{
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Entrypoint: []string{"/pause"},
	})
}

// file is one entry of a layer: a regular file (data), a folder (dir) or a
// symbolic link (link).
type file struct {
	name string // relative, no leading slash
	mode int64
	data []byte
	dir  bool
	link string
}

// busyboxLayer makes the root file system of the busybox image: the
// binary as /bin/busybox, one symlink per applet at the path busybox
// itself names (--list-full), and the folders and files programs expect.
func busyboxLayer(bin string) ([]byte, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	if err := checkStatic(bin); err != nil {
		return nil, err
	}
	list, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", bin, err)
	}
	files := []file{
		{name: "bin", mode: 0o755, dir: true},
		{name: "bin/busybox", mode: 0o755, data: data},
		{name: "dev", mode: 0o755, dir: true},
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{name: "home", mode: 0o755, dir: true},
		{name: "proc", mode: 0o555, dir: true},
		{name: "root", mode: 0o700, dir: true},
		{name: "sbin", mode: 0o755, dir: true},
		{name: "sys", mode: 0o555, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/bin", mode: 0o755, dir: true},
		{name: "usr/sbin", mode: 0o755, dir: true},
		{name: "var", mode: 0o755, dir: true},
		{name: "var/tmp", mode: 0o1777, dir: true},
	}
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.name] = true
	}
	for _, p := range strings.Fields(string(list)) {
		p = strings.TrimPrefix(path.Clean("/"+p), "/")
		if seen[p] {
			continue
		}
		if !seen[path.Dir(p)] {
			continue // linuxrc: not wanted in a container
		}
		seen[p] = true
		files = append(files, file{name: p, mode: 0o777, link: "/bin/busybox"})
	}
	for _, want := range []string{"bin/sh", "bin/sleep", "bin/cat", "bin/dd", "bin/sync", "bin/df", "bin/ls",
		"bin/echo", "bin/mount", "bin/stat", "bin/mkdir", "bin/rm", "bin/touch"} {
		if !seen[want] {
			return nil, fmt.Errorf("busybox %s has no applet %s", bin, path.Base(want))
		}
	}
	return layer(files)
}

// checkStatic fails for a dynamically linked binary: the image has no
// C library.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static (hack/node-deps.sh)", bin)
		}
	}
	return nil
}

// buildPause compiles pauseSource into a static, stripped binary for
// this machine's architecture.
func buildPause() ([]byte, error) {
	dir, err := os.MkdirTemp("", "cairn-pause-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module pause\n\ngo 1.21\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(pauseSource), 0o644); err != nil {
		return nil, err
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", "pause", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=", "GOWORK=off",
		"GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %v\n%s", err, out)
	}
	return os.ReadFile(filepath.Join(dir, "pause"))
}

// layer returns an uncompressed tar of files, sorted by name, with fixed
// owners and times.
func layer(files []file) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX, Uname: "", Gname: ""}
		switch {
		case f.dir:
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// imageConfig is the part of the OCI image configuration's "config" that
// these images set.
type imageConfig struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
	User       string   `json:"User,omitempty"`
	// Labels are the image's labels (provenance: the Debian packages
	// its files came from, the Go module versions of its binaries).
	Labels map[string]string `json:"Labels,omitempty"`
}
