package main

// Files taken from Debian packages: the packages that hold the wanted
// programs on this machine, at the version apt would install now,
// downloaded with `apt-get download`
// into a cache folder and read with `dpkg-deb --fsys-tarfile` (nothing is
// installed or run). Paths are merged the way Debian's usrmerge does
// (bin/, sbin/, lib/ and lib64/ live under usr/, with symbolic links at
// the top), so the image looks like a Debian root file system.

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// debRoot is a file tree assembled from Debian packages.
type debRoot struct {
	cache    string
	multi    string            // multiarch triplet, e.g. x86_64-linux-gnu
	pkgs     map[string]string // package -> version read
	files    map[string]file   // every file of the packages read, by merged path
	selected map[string]bool   // what goes into the image
}

func newDebRoot(cache string) (*debRoot, error) {
	multi := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	if multi == "" {
		return nil, fmt.Errorf("no Debian multiarch triplet known for %s", runtime.GOARCH)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	return &debRoot{cache: cache, multi: multi, pkgs: map[string]string{}, files: map[string]file{}, selected: map[string]bool{}}, nil
}

// mergedPath maps a path inside a package to its usrmerged place.
func mergedPath(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if p == top || strings.HasPrefix(p, top+"/") {
			return "usr/" + p
		}
	}
	return p
}

// load reads package pkg (as installed here) into the tree once.
func (r *debRoot) load(pkg string) error {
	pkg = strings.TrimSuffix(pkg, ":"+debArch())
	if _, ok := r.pkgs[pkg]; ok {
		return nil
	}
	version, err := candidate(pkg)
	if err != nil {
		return err
	}
	deb, err := r.fetch(pkg, version)
	if err != nil {
		return err
	}
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	data, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", deb, err)
		}
		name := mergedPath(h.Name)
		if name == "" || name == "." {
			continue
		}
		f := file{name: name, mode: h.Mode & 0o7777}
		switch h.Typeflag {
		case tar.TypeDir:
			f.dir = true
		case tar.TypeSymlink:
			f.link = h.Linkname
		case tar.TypeReg:
			if f.data, err = io.ReadAll(tr); err != nil {
				return err
			}
		case tar.TypeLink: // a hard link: a copy of the file it names
			src, ok := r.files[mergedPath(h.Linkname)]
			if !ok {
				return fmt.Errorf("%s: hard link %s to unknown %s", deb, h.Name, h.Linkname)
			}
			f.data = src.data
		default:
			continue
		}
		r.files[name] = f
	}
	r.pkgs[pkg] = version
	return nil
}

// fetch returns the .deb of pkg at version, downloading it into the cache
// folder the first time.
func (r *debRoot) fetch(pkg, version string) (string, error) {
	dir := filepath.Join(r.cache, pkg+"_"+strings.ReplaceAll(version, ":", "%3a"))
	if debs, _ := filepath.Glob(filepath.Join(dir, "*.deb")); len(debs) == 1 {
		return debs[0], nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("apt-get", "download", "-q", pkg+"="+version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %v\n%s", pkg, version, err, out)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s left %d .deb files", pkg, version, len(debs))
	}
	return debs[0], nil
}

func debArch() string { return runtime.GOARCH }

// candidate is the version of pkg that apt would install now (the
// machine's package lists; hack/install-deps.sh runs apt-get update): what
// a fresh machine gets, which the installed version need not be.
func candidate(pkg string) (string, error) {
	out, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache show %s: %v", pkg, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no version", pkg)
}

// owner is the installed package that holds the file at abs (an absolute
// path on this machine, before or after the usr merge).
func owner(abs string) (string, error) {
	candidates := []string{abs}
	if m := "/" + mergedPath(abs); m != abs {
		candidates = append(candidates, m)
	} else if strings.HasPrefix(abs, "/usr/") {
		candidates = append(candidates, strings.TrimPrefix(abs, "/usr"))
	}
	for _, c := range candidates {
		out, err := exec.Command("dpkg-query", "-S", c).Output()
		if err != nil {
			continue
		}
		line := strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		if i := strings.Index(line, ": "); i > 0 {
			return strings.SplitN(line[:i], ",", 2)[0], nil
		}
	}
	return "", fmt.Errorf("no installed package holds %s", abs)
}

// resolve follows symbolic links inside the tree (each link passed on
// the way is selected too) and returns the regular file's path.
func (r *debRoot) resolve(p string) (string, error) {
	for i := 0; i < 40; i++ {
		p = mergedPath(p)
		f, ok := r.files[p]
		if !ok {
			return "", fmt.Errorf("%s: not in the packages read (%s)", p, strings.Join(r.packageList(), ", "))
		}
		r.selectPath(p)
		if f.link == "" {
			return p, nil
		}
		if path.IsAbs(f.link) {
			p = f.link
		} else {
			p = path.Join(path.Dir(p), f.link)
		}
	}
	return "", fmt.Errorf("%s: too many symbolic links", p)
}

func (r *debRoot) selectPath(p string) {
	for d := p; d != "." && d != "/" && !r.selected[d]; d = path.Dir(d) {
		r.selected[d] = true
	}
}

// addProgram selects the program at p (a path in the image) from the
// package that holds it here, and every shared library it needs, from
// the packages that hold them, recursively.
func (r *debRoot) addProgram(p string) error {
	if _, ok := r.files[mergedPath(p)]; !ok {
		pkg, err := owner("/" + p)
		if err != nil {
			return err
		}
		if err := r.load(pkg); err != nil {
			return err
		}
	}
	real, err := r.resolve(p)
	if err != nil {
		return err
	}
	return r.addLibraries(real, map[string]bool{})
}

// addLibraries selects the dynamic loader and the DT_NEEDED libraries of
// the ELF file at p (nothing for a script).
func (r *debRoot) addLibraries(p string, seen map[string]bool) error {
	if seen[p] {
		return nil
	}
	seen[p] = true
	ef, err := elf.NewFile(bytes.NewReader(r.files[p].data))
	if err != nil {
		return nil // not ELF: a script; its interpreter is the caller's business
	}
	defer ef.Close()
	var need []string
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			b, err := io.ReadAll(prog.Open())
			if err != nil {
				return err
			}
			need = append(need, "@"+strings.TrimRight(string(b), "\x00"))
		}
	}
	libs, err := ef.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	need = append(need, libs...)
	for _, lib := range need {
		var where string
		if strings.HasPrefix(lib, "@") { // the interpreter: an absolute path
			where, err = r.find([]string{lib[1:]})
		} else {
			where, err = r.find([]string{"/lib/" + r.multi + "/" + lib, "/usr/lib/" + r.multi + "/" + lib, "/lib/" + lib, "/usr/lib/" + lib})
		}
		if err != nil {
			return fmt.Errorf("%s needs %s: %w", p, strings.TrimPrefix(lib, "@"), err)
		}
		real, err := r.resolve(where)
		if err != nil {
			return err
		}
		if err := r.addLibraries(real, seen); err != nil {
			return err
		}
	}
	return nil
}

// find returns the first of the candidate paths in the tree, loading the
// package that holds it here when none is there yet.
func (r *debRoot) find(candidates []string) (string, error) {
	for _, c := range candidates {
		if _, ok := r.files[mergedPath(c)]; ok {
			return c, nil
		}
	}
	for _, c := range candidates {
		pkg, err := owner(c)
		if err != nil {
			continue
		}
		if err := r.load(pkg); err != nil {
			return "", err
		}
		if _, ok := r.files[mergedPath(c)]; ok {
			return c, nil
		}
	}
	return "", errors.New("no installed package holds it")
}

// addFile selects one file of package pkg by its path in the image.
func (r *debRoot) addFile(pkg, p string) error {
	if err := r.load(pkg); err != nil {
		return err
	}
	_, err := r.resolve(p)
	return err
}

// packageList is "name=version" for every package read, sorted.
func (r *debRoot) packageList() []string {
	var l []string
	for p, v := range r.pkgs {
		l = append(l, p+"="+v)
	}
	sort.Strings(l)
	return l
}

// selectedFiles returns the selected files and the folders above them.
func (r *debRoot) selectedFiles() []file {
	var out []file
	for p := range r.selected {
		f, ok := r.files[p]
		if !ok { // a folder no package lists itself
			f = file{name: p, mode: 0o755, dir: true}
		}
		out = append(out, f)
	}
	return out
}
