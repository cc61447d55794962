package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/clientcmd"
)

// The network all isolated nodes share: a bridge on the host with the
// host's address, one veth per node.
const (
	HostBridge = "cairnh0"
	// HostIP is the host's address on HostBridge: the apiserver, MinIO and
	// anything else the nodes and their pods reach on the host must
	// listen there (or on 0.0.0.0).
	HostIP     = "10.89.0.1"
	hostPrefix = 24
	// kubernetesService is the ClusterIP and port of the default
	// namespace's kubernetes Service (--service-cluster-ip-range
	// 10.0.0.0/24 of test/e2e/cluster), which in-cluster clients dial.
	kubernetesService = "10.0.0.1"
	// nsDir holds the nodes' mount namespace files; it is a private
	// mount, as unshare --mount=FILE requires.
	nsDir = "/run/cairn-e2e-ns"
)

// Isolation puts a node in its own network and mount namespaces, the way
// kind runs each node in a container, so that several nodes share this
// machine: each has its own address, pod network, iptables, kubelet root
// folder and the folders of Binds, while the file system, /dev, /proc,
// /sys and the cgroup hierarchies are the host's.
//
// The node's network namespace (cairn-<Name>) has eth0 with IP on
// HostBridge and a default route to HostIP. Its pods get a default route
// and are masqueraded behind IP; what they send to the kubernetes
// Service (10.0.0.1:443) is forwarded (DNAT) to the apiserver at
// HostIP and the port of Config.Kubeconfig, since there is no kube-proxy.
// The kubelet listens on IP, dialed by the apiserver at the Node's
// InternalIP (APIServerArgs).
//
// The node's mount namespace is a slave of the host's (mounts made on
// the host later show up in it, none made in it show on the host). In
// it, <WorkDir>/root is bind-mounted on Config.RootDir and each Bind's
// Source on its Target, each made rshared so that containers can mount
// there with Bidirectional propagation.
type Isolation struct {
	// Name tells the node's namespaces, veth and cgroups apart: 1 to 8
	// characters of [a-z0-9].
	Name string
	// IP is the node's IPv4 address in 10.89.0.2–10.89.0.254.
	IP string
	// Binds are host folders mounted at paths of the node's mount
	// namespace (a data root, for instance).
	Binds []Bind
}

// Bind mounts the host folder Source at Target in a node's mount
// namespace.
type Bind struct {
	Source, Target string
}

var isoName = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

func (iso *Isolation) check() error {
	if !isoName.MatchString(iso.Name) {
		return fmt.Errorf("node: Isolation.Name %q: want 1 to 8 characters of [a-z0-9]", iso.Name)
	}
	ip := net.ParseIP(iso.IP).To4()
	_, hostNet, _ := net.ParseCIDR(fmt.Sprintf("%s/%d", HostIP, hostPrefix))
	if ip == nil || !hostNet.Contains(ip) || ip.Equal(net.ParseIP(HostIP)) || ip[3] == 0 || ip[3] == 255 {
		return fmt.Errorf("node: Isolation.IP %q: want an address in %s other than %s", iso.IP, hostNet, HostIP)
	}
	for _, b := range iso.Binds {
		if !filepath.IsAbs(b.Source) || !filepath.IsAbs(b.Target) {
			return fmt.Errorf("node: Isolation.Binds: %s -> %s: both paths must be absolute", b.Source, b.Target)
		}
	}
	return nil
}

func (iso *Isolation) netns() string     { return "cairn-" + iso.Name }
func (iso *Isolation) netnsPath() string { return "/run/netns/" + iso.netns() }
func (iso *Isolation) mntFile() string   { return filepath.Join(nsDir, iso.Name+".mnt") }
func (iso *Isolation) veth() string      { return "cairnh-" + iso.Name }

// cgroupRoot is the kubelet's --cgroup-root: the node's pods live under
// it in every hierarchy, apart from the other nodes'.
func (iso *Isolation) cgroupRoot() string { return "/cairn-" + iso.Name }

// wrap returns the command line that runs bin with args inside the
// node's namespaces (nsenter execs it: the pid is bin's).
func (iso *Isolation) wrap(bin string, args ...string) (string, []string) {
	return "nsenter", append([]string{"--mount=" + iso.mntFile(), "--net=" + iso.netnsPath(), "--", bin}, args...)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// apiServerAddress is host:port of the apiserver of kubeconfig, as the
// node reaches it: HostIP and the kubeconfig's port.
func apiServerAddress(kubeconfig string) (string, error) {
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return "", err
	}
	ctx := kc.Contexts[kc.CurrentContext]
	if ctx == nil || kc.Clusters[ctx.Cluster] == nil {
		return "", fmt.Errorf("kubeconfig %s has no current cluster", kubeconfig)
	}
	u, err := url.Parse(kc.Clusters[ctx.Cluster].Server)
	if err != nil || u.Port() == "" {
		return "", fmt.Errorf("kubeconfig %s: server %q has no port", kubeconfig, kc.Clusters[ctx.Cluster].Server)
	}
	return net.JoinHostPort(HostIP, u.Port()), nil
}

// nodeKubeconfig writes a copy of kubeconfig whose server is the
// apiserver's address on HostBridge, for the kubelet in the namespace.
func nodeKubeconfig(kubeconfig, addr, out string) error {
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return err
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + addr
	}
	return clientcmd.WriteToFile(*kc, out)
}

// setUp creates the node's namespaces, network and mounts (see
// Isolation). apiAddr is the apiserver's host:port on HostBridge.
// What it made is torn down by tearDown, also after a partial setUp.
func (iso *Isolation) setUp(workDir, rootDir, apiAddr, podCIDR string) error {
	// The host bridge, shared by all isolated nodes.
	if _, err := os.Stat("/sys/class/net/" + HostBridge); err != nil {
		if err := run("ip", "link", "add", HostBridge, "type", "bridge"); err != nil {
			return err
		}
		if err := run("ip", "addr", "add", fmt.Sprintf("%s/%d", HostIP, hostPrefix), "dev", HostBridge); err != nil {
			return err
		}
		if err := run("ip", "link", "set", HostBridge, "up"); err != nil {
			return err
		}
	}
	ns := iso.netns()
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", iso.veth(), "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "link", "set", iso.veth(), "master", HostBridge, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", iso.IP, hostPrefix), "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", HostIP},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	// kube-proxy's one job here: the kubernetes Service, for pods
	// (PREROUTING) and for the node's own processes (OUTPUT).
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		steps = append(steps, []string{"ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-A", chain,
			"-d", kubernetesService + "/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", apiAddr})
	}
	// Pod to pod across nodes: the host routes the node's pod network to
	// the node (hostState puts ip_forward back when the last node stops).
	steps = append(steps, []string{"ip", "route", "replace", podCIDR, "via", iso.IP, "dev", HostBridge},
		[]string{"sysctl", "-qw", "net.ipv4.ip_forward=1"})
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("node %s: network: %w", iso.Name, err)
		}
	}

	// The mount namespace, kept by a bind mount of its file in nsDir.
	if err := privateDir(nsDir); err != nil {
		return fmt.Errorf("node %s: %w", iso.Name, err)
	}
	if err := os.WriteFile(iso.mntFile(), nil, 0o600); err != nil {
		return err
	}
	if err := run("unshare", "--mount="+iso.mntFile(), "--propagation", "slave", "true"); err != nil {
		return fmt.Errorf("node %s: mount namespace: %w", iso.Name, err)
	}
	// The copies of the namespace files of the other nodes (and this
	// node's own) would keep those namespaces, and what is mounted in
	// them, alive after their nodes stop: drop them from this namespace.
	for _, d := range []string{nsDir, "/run/netns"} {
		if len(mountsUnder(d)) > 0 {
			if err := iso.nsRun("umount", "--recursive", "--lazy", d); err != nil {
				return fmt.Errorf("node %s: %w", iso.Name, err)
			}
		}
	}
	binds := append([]Bind{{Source: filepath.Join(workDir, "root"), Target: rootDir},
		{Source: filepath.Join(workDir, "cni-cache"), Target: "/var/lib/cni"}}, iso.Binds...)
	for _, b := range binds {
		if err := os.MkdirAll(b.Source, 0o750); err != nil {
			return err
		}
		// The target must exist on the host (the namespace shares its
		// file system); hostState records and removes what it creates.
		if err := os.MkdirAll(b.Target, 0o750); err != nil {
			return err
		}
		if err := iso.nsRun("mount", "--bind", b.Source, b.Target); err != nil {
			return fmt.Errorf("node %s: %w", iso.Name, err)
		}
		if err := iso.nsRun("mount", "--make-rshared", b.Target); err != nil {
			return fmt.Errorf("node %s: %w", iso.Name, err)
		}
	}

	// The node's cgroup root in every hierarchy (the kubelet refuses a
	// --cgroup-root that does not exist); cpuset needs its CPUs and memory
	// nodes before it can hold tasks.
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		d := filepath.Join(h, iso.cgroupRoot())
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("node %s: cgroup: %w", iso.Name, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("node %s: cgroup %s: %w", iso.Name, f, err)
				}
			}
		}
	}
	return nil
}

// nsRun runs a command in the node's namespaces.
func (iso *Isolation) nsRun(name string, args ...string) error {
	bin, a := iso.wrap(name, args...)
	return run(bin, a...)
}

// tearDown removes the node's namespaces (what its processes mounted
// there goes with the mount namespace once they are gone) and its veth.
// The host bridge and nsDir go when no other isolated node is left
// (last).
func (iso *Isolation) tearDown(last bool) error {
	var errs []error
	if err := unix.Unmount(iso.mntFile(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", iso.mntFile(), err))
	}
	if err := os.Remove(iso.mntFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if _, err := os.Stat(iso.netnsPath()); err == nil {
		errs = append(errs, run("ip", "netns", "delete", iso.netns()))
	}
	if _, err := os.Stat("/sys/class/net/" + iso.veth()); err == nil {
		errs = append(errs, run("ip", "link", "delete", iso.veth()))
	}
	// The route to the pod network goes with the bridge; a node that
	// stops while others run drops it.
	if out, err := exec.Command("ip", "route", "show", "via", iso.IP).Output(); err == nil && len(out) > 0 {
		errs = append(errs, run("ip", "route", "flush", "via", iso.IP))
	}
	if last {
		if _, err := os.Stat("/sys/class/net/" + HostBridge); err == nil {
			errs = append(errs, run("ip", "link", "delete", HostBridge))
		}
		if err := unix.Unmount(nsDir, unix.MNT_DETACH); err == nil {
			_ = os.Remove(nsDir)
		}
	}
	return errors.Join(errs...)
}

// privateDir makes dir a private bind mount of itself (once).
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, mp := range mountsUnder(dir) {
		if mp == dir {
			return nil
		}
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// Command returns a command that runs in the node's namespaces (for an
// isolated node; on the host otherwise), e.g. to look at its mounts.
func (k *Kubelet) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if iso := k.cfg.Isolated; iso != nil {
		bin, a := iso.wrap(name, args...)
		return exec.CommandContext(ctx, bin, a...)
	}
	return exec.CommandContext(ctx, name, args...)
}

// IP returns the address the node's kubelet listens on: Isolation.IP, or
// 127.0.0.1.
func (k *Kubelet) IP() string {
	if k.cfg.Isolated != nil {
		return k.cfg.Isolated.IP
	}
	return "127.0.0.1"
}
