package main

import (
	"bytes"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func testLayer(t *testing.T) []byte {
	t.Helper()
	l, err := layer(append(baseFiles(), file{name: "hello", mode: 0o755, data: []byte("#!/bin/sh\necho hi\n")}))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The same inputs give the same archive, byte for byte, compressed or not.
func TestWriteImageReproducible(t *testing.T) {
	dir := t.TempDir()
	cfg := imageConfig{Env: []string{pathEnv}, Entrypoint: []string{"/hello"}, Labels: map[string]string{"a": "b"}}
	var archives [][]byte
	for i := 0; i < 2; i++ {
		p := filepath.Join(dir, "x.tar")
		if _, err := writeCompressedImage(p, "example.com/cairn/hello:1.0", testLayer(t), cfg); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		archives = append(archives, b)
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Fatal("two writes of the same image differ")
	}
	other := cfg
	other.Entrypoint = []string{"/other"}
	d1, _ := writeCompressedImage(filepath.Join(dir, "y.tar"), "example.com/cairn/hello:1.0", testLayer(t), cfg)
	d2, _ := writeCompressedImage(filepath.Join(dir, "z.tar"), "example.com/cairn/hello:1.0", testLayer(t), other)
	if d1 == d2 {
		t.Fatal("a different configuration gave the same digest")
	}
}

// The archive is a valid OCI layout whose index names the image by its
// full reference, and the image can be pushed to a registry (what crane
// and skopeo do) and pulled back with the same digest.
func TestArchivePushable(t *testing.T) {
	dir := t.TempDir()
	ref := "example.com/cairn/hello:1.0"
	want, err := writeCompressedImage(filepath.Join(dir, "hello.tar"), ref, testLayer(t), imageConfig{Entrypoint: []string{"/hello"}})
	if err != nil {
		t.Fatal(err)
	}
	unpacked := filepath.Join(dir, "layout")
	if err := os.MkdirAll(unpacked, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-xf", filepath.Join(dir, "hello.tar"), "-C", unpacked).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	p, err := layout.FromPath(unpacked)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Annotations[annotationContainerdName] != ref ||
		m.Manifests[0].Annotations[annotationRefName] != "1.0" || m.Manifests[0].Digest != want {
		t.Fatalf("index %+v, want one image %s named %s", m.Manifests, want, ref)
	}
	img, err := idx.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	dst, err := name.ParseReference(u.Host + "/cairn/hello:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	back, err := remote.Image(dst)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := back.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
}

func TestMergedPath(t *testing.T) {
	for in, want := range map[string]string{
		"./sbin/mke2fs": "usr/sbin/mke2fs", "./lib/x86_64-linux-gnu/libc.so.6": "usr/lib/x86_64-linux-gnu/libc.so.6",
		"./lib64/ld-linux-x86-64.so.2": "usr/lib64/ld-linux-x86-64.so.2", "./usr/bin/mount": "usr/bin/mount",
		"./etc/mke2fs.conf": "etc/mke2fs.conf", "./library/x": "library/x", "/bin": "usr/bin",
	} {
		if got := mergedPath(in); got != want {
			t.Errorf("mergedPath(%q) = %q, want %q", in, got, want)
		}
	}
}
