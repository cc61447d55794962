package main

// The one image writer of hack/images, on go-containerregistry: an image
// of one layer, written as an OCI image layout in a tar archive that
// `ctr images import`, `skopeo copy oci-archive:…` and crane (after
// unpacking: `crane push --index DIR`) read. Everything that goes in is
// fixed (timestamps at the epoch, owners 0:0, entries sorted), so the same
// inputs give the same bytes and digests.

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations of the index entry: containerd names the imported image
// after the first (a full reference); the second is the OCI tag that
// skopeo's oci-archive:FILE:TAG selects.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// writeImage writes an OCI image layout with one single-layer image,
// named ref, as a tarball at dst. The layer is stored uncompressed (its
// digest is its diff ID).
func writeImage(dst, ref string, layerTar []byte, cfg imageConfig) error {
	_, err := writeImageWith(dst, ref, static.NewLayer(layerTar, types.OCIUncompressedLayer), cfg)
	return err
}

// writeCompressedImage is writeImage with a gzip-compressed layer, for the
// images that are shipped; it returns the image's manifest digest.
func writeCompressedImage(dst, ref string, layerTar []byte, cfg imageConfig) (v1.Hash, error) {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return v1.Hash{}, err
	}
	return writeImageWith(dst, ref, l, cfg)
}

func writeImageWith(dst, ref string, l v1.Layer, cfg imageConfig) (v1.Hash, error) {
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: l, MediaType: mustMediaType(l)})
	if err != nil {
		return v1.Hash{}, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	created := v1.Time{Time: epoch}
	cf.Created, cf.Architecture, cf.OS = created, runtime.GOARCH, "linux"
	cf.Config = v1.Config{Env: cfg.Env, Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, WorkingDir: cfg.WorkingDir,
		User: cfg.User, Labels: cfg.Labels}
	cf.History = []v1.History{{Created: created, CreatedBy: "cairn hack/images"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".layout-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	tag := ref[strings.LastIndex(ref, ":")+1:]
	if err := p.AppendImage(img,
		layout.WithAnnotations(map[string]string{annotationContainerdName: ref, annotationRefName: tag}),
		layout.WithPlatform(v1.Platform{Architecture: runtime.GOARCH, OS: "linux"})); err != nil {
		return v1.Hash{}, err
	}
	return d, tarDir(tmp, dst)
}

func mustMediaType(l v1.Layer) types.MediaType {
	mt, err := l.MediaType()
	if err != nil {
		return types.OCILayer
	}
	return mt
}

// tarDir writes the files below dir into the tar archive dst (written
// beside it, then renamed), sorted, with fixed times and owners.
func tarDir(dir, dst string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			f.Close()
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: epoch, Format: tar.FormatPAX, Typeflag: tar.TypeReg}
		var data []byte
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		} else if data, err = os.ReadFile(p); err != nil {
			f.Close()
			return err
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
