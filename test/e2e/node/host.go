package node

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The kubelet and the CNI plugins change a few things of the machine
// outside any folder they are given. hostState records them at Start so
// Stop can put them back.

// kernelTunables are the sysctls the kubelet sets at start
// (protectKernelDefaults=false: vm.overcommit_memory=1, kernel.panic=10,
// ...), plus the IPv4 forwarding the CNI bridge plugin turns on for a
// gateway bridge.
var kernelTunables = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward",
}

// hostPaths are folders the kubelet, containerd or libcni create at fixed
// places whatever their configuration says. One that Start did not find
// is removed by Stop.
var hostPaths = []string{
	"/var/log/containers", // kubelet: symlinks to the containers' logs
	"/var/log/pods",       // kubelet's default podLogsDir (set elsewhere here)
	"/var/lib/cni",        // libcni's result cache
	"/run/containerd",     // containerd 1.x: shim sockets in s/
	"/var/lib/kubelet",    // kubelet: device-plugins/ and pki/, whatever --root-dir says
}

// kubeChains are the iptables chains the kubelet creates (and the rules
// that jump to KUBE-FIREWALL).
var kubeChains = []struct{ table, chain string }{
	{"filter", "KUBE-FIREWALL"},
	{"filter", "KUBE-KUBELET-CANARY"},
	{"nat", "KUBE-KUBELET-CANARY"},
	{"mangle", "KUBE-KUBELET-CANARY"},
	{"mangle", "KUBE-IPTABLES-HINT"},
}

// stateFile records, while a node runs, what Stop must undo (an
// isolated node's: stateFile with -<Name> before .json). A Start that
// finds one written by another process first undoes what that earlier
// run, whose test process was killed before it could Stop, left behind.
// It is on /run, a tmpfs: a reboot clears it together with what it
// describes.
const stateFile = "/run/cairn-e2e-node.json"

// hostState is the machine as Start found it, and what Start then made.
type hostState struct {
	// Owner is the pid of the test process that started the node.
	Owner int
	// The node's configuration (enough for Stop to find its parts).
	BinDir, WorkDir, RootDir, Bridge string
	Isolated                         *Isolation `json:",omitempty"`
	// CreatedRoot: Start created RootDir, Stop removes it.
	CreatedRoot bool
	Sysctls     map[string]string // path under /proc/sys -> value before Start
	Absent      []string          // hostPaths that did not exist
	Iptables    map[string]bool   // iptables/ip6tables that had no KUBE- chain
	CgroupDirs  []string          // <hierarchy>/kubepods folders
}

func recordHost(cfg Config) *hostState {
	h := &hostState{
		Owner:  os.Getpid(),
		BinDir: cfg.BinDir, WorkDir: cfg.WorkDir, RootDir: cfg.RootDir, Bridge: cfg.Bridge, Isolated: cfg.Isolated,
		Sysctls: map[string]string{}, Iptables: map[string]bool{},
	}
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	cgroup := "kubepods"
	if cfg.Isolated != nil {
		cgroup = cfg.Isolated.cgroupRoot()
	}
	for _, d := range hier {
		h.CgroupDirs = append(h.CgroupDirs, filepath.Join(d, cgroup))
	}
	// A node of this process runs already: the machine as it was before
	// is in its record (the last node to stop puts it back).
	if olds, _ := loadStates(); len(olds) > 0 {
		for _, o := range olds {
			if o.Owner == h.Owner {
				h.Sysctls, h.Absent, h.Iptables = o.Sysctls, o.Absent, o.Iptables
			}
		}
	}
	paths := hostPaths
	if iso := cfg.Isolated; iso != nil {
		// The mount points of the node's binds (see Isolation.setUp).
		paths = append(append([]string{}, paths...), cfg.RootDir, "/var/lib/cni", "/run/netns", nsDir)
		for _, b := range iso.Binds {
			paths = append(paths, b.Target)
		}
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) && !slices.Contains(h.Absent, p) {
			h.Absent = append(h.Absent, p)
		}
	}
	if len(h.Sysctls) > 0 {
		return h
	}
	for _, k := range kernelTunables {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			h.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(ipt + "-save").Output()
		if err == nil && !strings.Contains(string(out), "KUBE-") {
			h.Iptables[ipt] = true
		}
	}
	return h
}

// file is the node's state file.
func (h *hostState) file() string {
	if h.Isolated != nil {
		return strings.TrimSuffix(stateFile, ".json") + "-" + h.Isolated.Name + ".json"
	}
	return stateFile
}

func (h *hostState) save() error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	tmp := h.file() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, h.file())
}

// last reports whether no other node's state file is there: this node
// is the last one on the machine.
func (h *hostState) last() bool {
	olds, _ := loadStates()
	for _, o := range olds {
		if o.file() != h.file() {
			return false
		}
	}
	return true
}

// loadStates returns the states of the nodes that run or whose earlier
// run did not stop.
func loadStates() ([]*hostState, error) {
	files, _ := filepath.Glob(strings.TrimSuffix(stateFile, ".json") + "*.json")
	var out []*hostState
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		h := &hostState{}
		if err := json.Unmarshal(b, h); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, h)
	}
	return out, nil
}

// restore puts back the sysctls and removes the kubelet's iptables chains
// (where there were none before). Paths and cgroups are Stop's.
func (h *hostState) restore() error {
	var errs []error
	for k, v := range h.Sysctls {
		cur, err := os.ReadFile("/proc/sys/" + k)
		if err == nil && strings.TrimSpace(string(cur)) == v {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	for ipt := range h.Iptables {
		for _, hook := range []string{"INPUT", "OUTPUT"} {
			for exec.Command(ipt, "-w", "-t", "filter", "-D", hook, "-j", "KUBE-FIREWALL").Run() == nil {
			}
		}
		for _, c := range kubeChains {
			_ = exec.Command(ipt, "-w", "-t", c.table, "-F", c.chain).Run()
			_ = exec.Command(ipt, "-w", "-t", c.table, "-X", c.chain).Run()
		}
		if out, err := exec.Command(ipt + "-save").Output(); err == nil && strings.Contains(string(out), "KUBE-") {
			errs = append(errs, fmt.Errorf("%s still has KUBE- chains after clean-up", ipt))
		}
	}
	return errors.Join(errs...)
}

// killCgroups SIGKILLs every process in the kubepods cgroups (containers
// the runtime did not stop) and removes the cgroups, deepest first.
func (h *hostState) killCgroups() error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		var left []string
		for _, root := range h.CgroupDirs {
			var dirs []string
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
			for _, d := range dirs {
				if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
					for _, f := range strings.Fields(string(b)) {
						if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
							_ = syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}
				// A frozen cgroup must thaw for its processes to die.
				if st, err := os.ReadFile(filepath.Join(d, "freezer.state")); err == nil && strings.TrimSpace(string(st)) != "THAWED" {
					_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
				}
				if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
					left = append(left, d)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups not removable: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if (mp == dir || strings.HasPrefix(mp, dir+"/")) && !seen[mp] {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount decodes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll lazily unmounts everything at or below dir until nothing is
// left (a shared mount may show up again once through propagation).
func unmountAll(dir string) error {
	for range 10 {
		mps := mountsUnder(dir)
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if mps := mountsUnder(dir); len(mps) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mps)
	}
	return nil
}

// removeTree unmounts everything below dir and removes it; it refuses to
// remove anything while a mount is left (that would delete the mounted
// file system's content).
func removeTree(dir string) error {
	if err := unmountAll(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}
