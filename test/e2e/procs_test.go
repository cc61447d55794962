package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// process is one component of the cluster run as a local process, the way
// its container would run it.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startProcess runs bin with args; hostname, if set, puts it in its own
// UTS namespace with that host name, as a pod would have (the sidecars'
// leader election identity is the host name).
func startProcess(logDir, name, hostname, bin string, args, env []string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if hostname != "" {
		cmd = exec.Command("unshare", append([]string{"--uts", "--", "sh", "-c", `hostname "$0" && exec "$@"`, hostname, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// kill sends SIGKILL to the process group and waits.
func (p *process) kill() {
	if p == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// exited reports whether the process ended within d.
func (p *process) exited(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *process) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// podSpec finds the pod template of the named Deployment or DaemonSet in
// the rendered manifests.
func podSpec(objs []*unstructured.Unstructured, kind, name string) (*corev1.PodSpec, error) {
	for _, o := range objs {
		if o.GetKind() != kind || o.GetName() != name {
			continue
		}
		switch kind {
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
				return nil, err
			}
			return &d.Spec.Template.Spec, nil
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
				return nil, err
			}
			return &d.Spec.Template.Spec, nil
		}
	}
	return nil, fmt.Errorf("%s %s not in the manifests", kind, name)
}

// podEnv is what the downward API would give a container of a pod.
type podEnv struct {
	namespace, podName, nodeName string
}

// containerCommand turns a container of the shipped manifests into a
// local command: the same args, with $(VAR) expanded from the container's
// env (downward API values from pe), the socket directory /csi moved to
// sockDir, HTTP endpoints moved to free local ports, and the replacements
// in rewrite applied to whole flags (--name=value) by name.
func containerCommand(spec *corev1.PodSpec, container string, pe podEnv, sockDir string, rewrite map[string]string) (args, env []string, err error) {
	var c *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == container {
			c = &spec.Containers[i]
		}
	}
	if c == nil {
		return nil, nil, fmt.Errorf("container %s not in the pod spec", container)
	}
	vars := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if f := e.ValueFrom; f != nil && f.FieldRef != nil {
			switch f.FieldRef.FieldPath {
			case "metadata.namespace":
				v = pe.namespace
			case "metadata.name":
				v = pe.podName
			case "spec.nodeName":
				v = pe.nodeName
			case "status.podIP":
				v = "127.0.0.1" // a host process: the host's network
			default:
				return nil, nil, fmt.Errorf("container %s: env %s from unsupported field %s", container, e.Name, f.FieldRef.FieldPath)
			}
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	for _, a := range c.Args {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		a = strings.ReplaceAll(a, "/csi/csi.sock", filepath.Join(sockDir, "csi.sock"))
		name, _, _ := strings.Cut(a, "=")
		if strings.HasPrefix(name, "--http-endpoint") || strings.HasPrefix(name, "--metrics-address") {
			addr, err := harness.FreeAddr()
			if err != nil {
				return nil, nil, err
			}
			a = name + "=" + addr
		}
		if v, ok := rewrite[name]; ok {
			a = name + "=" + v
			delete(rewrite, name)
		}
		args = append(args, a)
	}
	for name, v := range rewrite { // flags the manifest does not set
		args = append(args, name+"="+v)
	}
	return args, env, nil
}
