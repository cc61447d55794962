package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"sigs.k8s.io/yaml"

	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/ui"
)

const pluginUsage = `kubectl cairn — Cairn's volumes, snapshots, backups and nodes

Usage:
  kubectl cairn volumes   [-n NS | -A] [-o wide|json|yaml]
  kubectl cairn snapshots [-n NS | -A] [-o wide|json|yaml]
  kubectl cairn backups   [-n NS | -A] [--target NAME] [-o wide|json|yaml]
  kubectl cairn nodes     [-o wide|json|yaml]
  kubectl cairn ui        [--listen 127.0.0.1:8080]

Flags for all: --kubeconfig FILE, --context NAME (as kubectl's).
Install: put the cairn binary on PATH as kubectl-cairn (a copy or a symlink).
`

// isPlugin: the binary runs as kubectl's plugin when named kubectl-cairn.
func isPlugin(arg0 string) bool {
	base := arg0[strings.LastIndex(arg0, "/")+1:]
	return base == "kubectl-cairn"
}

// runPlugin is `kubectl cairn …`; it writes to out.
func runPlugin(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(out, pluginUsage)
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	cmd := args[0]
	if cmd == "ui" {
		return runUI(args[1:])
	}
	fs := flag.NewFlagSet("kubectl cairn "+cmd, flag.ContinueOnError)
	var uf userFlags
	uf.register(fs)
	fs.StringVar(&uf.namespace, "namespace", "", "namespace (default: the context's)")
	fs.StringVar(&uf.namespace, "n", "", "namespace (short for --namespace)")
	all := fs.Bool("all-namespaces", false, "every namespace")
	fs.BoolVar(all, "A", false, "every namespace (short for --all-namespaces)")
	output := fs.String("output", "", "output format: wide, json or yaml (default: a table)")
	fs.StringVar(output, "o", "", "output format (short for --output)")
	target := fs.String("target", "", "backups: only those in this BackupTarget")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch *output {
	case "", "wide", "json", "yaml":
	default:
		return fmt.Errorf("--output %q: want wide, json or yaml", *output)
	}
	switch cmd {
	case "volumes", "snapshots", "backups", "nodes":
	default:
		return fmt.Errorf("unknown command %q\n\n%s", cmd, pluginUsage)
	}
	ns := uf.namespace
	if ns == "" && !*all {
		var err error
		if ns, _, err = uf.clientConfig().Namespace(); err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
	}
	if *all {
		ns = ""
	}
	c, err := uf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := ui.Read(ctx, c, csi.DriverName)
	if err != nil {
		return err
	}
	for _, d := range st.Denied {
		fmt.Fprintf(os.Stderr, "kubectl cairn: not shown, your identity may not list %s\n", d)
	}
	t := &table{wide: *output == "wide", all: ns == ""}
	var items any
	switch cmd {
	case "volumes":
		var rows []ui.Volume
		t.head("NAMESPACE", "NAME", "SIZE", "USED", "NODE", "MODE", "FS", "STATE", "SNAPSHOTS", "BACKUPS", "LAST-BACKUP", "AGE", "|VOLUME", "|CLASS")
		for _, v := range st.Volumes {
			if ns != "" && v.Namespace != ns {
				continue
			}
			rows = append(rows, v)
			last := "never"
			if v.LastBackup != nil {
				last = since(*v.LastBackup)
			}
			t.row(v.Namespace, v.Name, size(v.SizeBytes), size(v.UsedBytes), v.Node, v.Mode, v.FsType, v.State, fmt.Sprint(v.SnapshotCount()), fmt.Sprint(v.BackupCount()), last, since(v.Created), v.VolumeID, v.Class)
		}
		items = rows
	case "snapshots", "backups":
		var rows []ui.Snapshot
		t.head("NAMESPACE", "NAME", "PVC", "KIND", "CLASS", "READY", "SIZE", "AGE", "|TARGET", "|HANDLE")
		for _, v := range st.Volumes {
			for _, s := range v.Snapshots {
				if (ns != "" && s.Namespace != ns) || (cmd == "backups" && (!s.Backup || (*target != "" && s.Target != *target))) {
					continue
				}
				rows = append(rows, s)
				kind := "snapshot"
				if s.Backup {
					kind = "backup"
				}
				t.row(s.Namespace, s.Name, v.Name, kind, s.Class, fmt.Sprint(s.Ready), size(s.RestoreBytes), since(s.Created), s.Target, s.Handle)
			}
		}
		items = rows
	case "nodes":
		t.all = true
		t.head("NAME", "READY", "CAPACITY", "USED", "RESERVED", "AVAILABLE", "CLONE", "VOLUMES", "HEARTBEAT", "|TARGETS", "|VERSION")
		for _, n := range st.Nodes {
			t.row(n.Name, fmt.Sprint(n.Ready && time.Since(n.Heartbeat) < 2*time.Minute), size(n.CapacityBytes), size(n.UsedBytes), size(n.ReservedBytes),
				size(n.AvailableBytes), n.CloneMode, fmt.Sprint(n.Volumes), since(n.Heartbeat), strings.Join(n.Targets, ","), n.Version)
		}
		items = st.Nodes
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"items": items})
	case "yaml":
		b, err := yaml.Marshal(map[string]any{"items": items})
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	}
	if len(t.rows) == 0 {
		where := "in namespace " + ns
		if ns == "" {
			where = "anywhere"
		}
		fmt.Fprintf(out, "No %s found %s.\n", cmd, where)
		return nil
	}
	return t.print(out)
}

// table prints like kubectl: upper-case headers, columns padded; columns
// named "|X" only with -o wide; NAMESPACE only across namespaces.
type table struct {
	wide, all bool
	cols      []string
	rows      [][]string
}

func (t *table) head(cols ...string) { t.cols = cols }

// row adds a line; control characters in the cells (object fields are
// untrusted: a name or message could carry terminal escapes or tabs that
// break the columns) are shown as '?'.
func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return '?'
			}
			return r
		}, c)
	}
	t.rows = append(t.rows, cells)
}

func (t *table) print(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	keep := func(i int) bool {
		c := t.cols[i]
		return !(strings.HasPrefix(c, "|") && !t.wide) && !(c == "NAMESPACE" && !t.all)
	}
	line := func(cells []string) {
		var out []string
		for i, c := range cells {
			if keep(i) {
				out = append(out, c)
			}
		}
		fmt.Fprintln(w, strings.Join(out, "\t"))
	}
	var head []string
	for _, c := range t.cols {
		head = append(head, strings.TrimPrefix(c, "|"))
	}
	line(head)
	for _, r := range t.rows {
		line(r)
	}
	return w.Flush()
}

func size(n int64) string {
	if n <= 0 {
		return "-"
	}
	const gi, mi = 1 << 30, 1 << 20
	switch {
	case n%gi == 0:
		return fmt.Sprintf("%dGi", n/gi)
	case n >= gi:
		return fmt.Sprintf("%.1fGi", float64(n)/gi)
	}
	return fmt.Sprintf("%dMi", (n+mi-1)/mi)
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return ui.HumanAge(time.Since(t))
}
