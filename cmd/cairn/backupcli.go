package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/ui"
)

// Exit codes of `cairn backup`, for scripts.
const (
	exitOK       = 0
	exitFailed   = 1 // the operation could not be done
	exitUsage    = 2 // bad command line
	exitDamaged  = 3 // verify found damaged blocks or manifests
	exitNotFound = 4 // the named backup does not exist
)

const backupUsage = `Usage: cairn backup <command> --target URL [--key-file FILE] [flags] [args]

Commands:
  list    [--volume ID] [--json]          list committed backups
  show    VOLUME/BACKUP [--json]           show one backup's manifest summary
  verify  [VOLUME/BACKUP ...]              read back and check every block (all backups if none named)
  restore VOLUME/BACKUP --to FILE          restore into a new sparse file
  delete  VOLUME/BACKUP ...                delete backups (run gc to reclaim space)
  gc      [--min-age 1h]                   delete packs no backup refers to
  standby --volume ID --to FILE [--once] [--interval 1m]
                                           keep FILE a copy of the volume's newest backup: a full
                                           restore first, then only the blocks each newer backup
                                           changed (state in FILE.standby.json); stop it to use FILE
  rotate-key --new-key-file FILE           wrap an encrypted target's data key with a new
                                           master key (with --key-file the current one);
                                           nothing else is rewritten

--key-file FILE is the master key of an encrypted target (exactly 32 bytes); a
new target used with a key is created encrypted.

A backup may also be named by its snapshot handle bs://TARGET/VOLUME/BACKUP.
URL is file:///path or s3://bucket/prefix?endpoint=host:port (credentials from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
Exit codes: 0 ok, 1 failed, 2 usage, 3 damage found by verify, 4 backup not found.
`

type cliError struct {
	code int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }

func runBackupCLI(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, backupUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("backup "+cmd, flag.ContinueOnError)
	target := fs.String("target", os.Getenv("CAIRN_BACKUP_TARGET"), "backup target URL (or $CAIRN_BACKUP_TARGET)")
	asJSON := fs.Bool("json", false, "print JSON")
	volume := fs.String("volume", "", "list: only this volume's backups")
	to := fs.String("to", "", "restore: the file to create")
	minAge := fs.Duration("min-age", backup.DefaultGCMinAge, "gc: keep unreferenced packs younger than this")
	keyFile := fs.String("key-file", os.Getenv("CAIRN_BACKUP_KEY_FILE"), "the target's master key, a file of exactly 32 bytes (or $CAIRN_BACKUP_KEY_FILE)")
	newKeyFile := fs.String("new-key-file", "", "rotate-key: the new master key")
	once := fs.Bool("once", false, "standby: one step, then exit")
	interval := fs.Duration("interval", time.Minute, "standby: how often to look for a newer backup")
	if err := fs.Parse(reorderFlags(fs, args)); err != nil {
		return exitUsage
	}
	if *target == "" {
		fmt.Fprintln(os.Stderr, "cairn backup: --target is required")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := objstore.Open(ctx, *target, objstore.Credentials{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn backup:", err)
		return exitFailed
	}
	var key []byte
	if *keyFile != "" {
		if key, err = backup.ReadKeyFile(*keyFile); err != nil {
			fmt.Fprintln(os.Stderr, "cairn backup:", err)
			return exitUsage
		}
	}
	repo, err := backup.OpenKeyed(ctx, st, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn backup:", err)
		return exitFailed
	}
	c := &backupCLI{ctx: ctx, repo: repo, json: *asJSON, out: os.Stdout}
	switch cmd {
	case "list":
		err = c.list(*volume)
	case "show":
		err = c.show(fs.Args())
	case "rotate-key":
		err = c.rotateKey(*newKeyFile)
	case "standby":
		err = c.standby(*volume, *to, *once, *interval)
	case "verify":
		err = c.verify(fs.Args())
	case "restore":
		err = c.restore(fs.Args(), *to)
	case "delete":
		err = c.delete(fs.Args())
	case "gc":
		err = c.gc(*minAge)
	default:
		fmt.Fprintf(os.Stderr, "cairn backup: unknown command %q\n\n%s", cmd, backupUsage)
		return exitUsage
	}
	var ce *cliError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		fmt.Fprintln(os.Stderr, "cairn backup:", ce.err)
		return ce.code
	case errors.Is(err, backup.ErrNotFound):
		fmt.Fprintln(os.Stderr, "cairn backup:", err)
		return exitNotFound
	default:
		fmt.Fprintln(os.Stderr, "cairn backup:", err)
		return exitFailed
	}
}

// reorderFlags lets flags follow positional arguments.
func reorderFlags(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") {
				if f := fs.Lookup(name); f != nil {
					if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
						if i+1 < len(args) {
							flags = append(flags, args[i+1])
							i++
						}
					}
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

type backupCLI struct {
	ctx  context.Context
	repo *backup.Repo
	json bool
	out  io.Writer
}

// parseRef accepts VOLUME/BACKUP or bs://TARGET/VOLUME/BACKUP.
func parseRef(s string) (backup.BackupRef, error) {
	if model.IsBackupHandle(s) {
		h, err := model.ParseBackupHandle(s)
		if err != nil {
			return backup.BackupRef{}, &cliError{exitUsage, fmt.Errorf("%q: a handle is bs://TARGET/VOLUME/BACKUP", s)}
		}
		return backup.BackupRef{VolumeID: h.VolumeID, BackupID: h.BackupID}, nil
	}
	vol, id, ok := strings.Cut(s, "/")
	if !ok || !model.ValidStoreVolumeID(vol) || !model.ValidBackupID(id) {
		return backup.BackupRef{}, &cliError{exitUsage, fmt.Errorf("%q is not VOLUME/BACKUP (e.g. v-0123…/b-4567…)", s)}
	}
	return backup.BackupRef{VolumeID: vol, BackupID: id}, nil
}

func (c *backupCLI) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *backupCLI) list(volume string) error {
	ms, damaged, err := c.repo.Manifests(c.ctx, volume)
	if err != nil {
		return err
	}
	for _, d := range damaged {
		fmt.Fprintf(os.Stderr, "cairn backup: warning: skipping damaged manifest %s\n", d)
	}
	for _, m := range ms {
		m.Blocks = nil
	}
	if c.json {
		return c.printJSON(ms)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tBACKUP\tSNAPSHOT\tCOMPLETED\tSIZE\tPARENT")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.VolumeID, m.ID, printable(m.SnapshotName), m.CompletedAt.Format(time.RFC3339), ui.HumanBytes(m.SizeBytes), orDash(m.Parent))
	}
	return tw.Flush()
}

func (c *backupCLI) standby(volume, to string, once bool, interval time.Duration) error {
	if volume == "" || to == "" {
		return &cliError{exitUsage, errors.New("standby needs --volume ID and --to FILE")}
	}
	if interval < time.Second {
		return &cliError{exitUsage, errors.New("standby: --interval must be at least 1s")}
	}
	s := &backup.Standby{Repo: c.repo, VolumeID: volume, File: to}
	for {
		start := time.Now()
		rep, err := s.Step(c.ctx)
		if err != nil {
			if once || c.ctx.Err() != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "cairn backup: standby: %v (retrying in %s)\n", err, interval)
		} else {
			line := fmt.Sprintf("standby %s: at backup %s (completed %s), behind %d", to, rep.BackupID, rep.CompletedAt.Format(time.RFC3339), rep.Behind)
			switch {
			case rep.Full:
				line += fmt.Sprintf("; restored in full in %.1fs", time.Since(start).Seconds())
			case rep.Applied:
				d := rep.Delta
				line += fmt.Sprintf("; applied: %d blocks fetched (%s), %d kept, %d zeroed, in %.1fs",
					d.BlocksFetched, ui.HumanBytes(d.BytesDownloaded), d.BlocksKept, d.BlocksZeroed, time.Since(start).Seconds())
			default:
				line += "; up to date"
			}
			if c.json {
				if err := c.printJSON(rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(c.out, line)
			}
		}
		if once {
			return nil
		}
		select {
		case <-c.ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func (c *backupCLI) rotateKey(newKeyFile string) error {
	if newKeyFile == "" {
		return &cliError{exitUsage, errors.New("rotate-key needs --new-key-file FILE (and --key-file with the current key)")}
	}
	next, err := backup.ReadKeyFile(newKeyFile)
	if err != nil {
		return &cliError{exitUsage, err}
	}
	if err := c.repo.RotateKey(c.ctx, next); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "rotated the master key of %s: the new key opens it, the old one no longer opens its configuration\n"+
		"(the data key is unchanged: a copy of the old configuration, e.g. an older object version, still opens it with the old key)\n", c.repo.Store())
	return nil
}

func (c *backupCLI) show(args []string) error {
	if len(args) != 1 {
		return &cliError{exitUsage, errors.New("show takes one VOLUME/BACKUP")}
	}
	ref, err := parseRef(args[0])
	if err != nil {
		return err
	}
	m, err := c.repo.Manifest(c.ctx, ref.VolumeID, ref.BackupID)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(m)
	}
	packs := map[string]bool{}
	for _, e := range m.Blocks {
		packs[e.Pack] = true
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"Backup", m.ID}, {"Volume", m.VolumeID}, {"Volume name", orDash(m.VolumeName)}, {"Snapshot", orDash(m.SnapshotName)},
		{"Size", ui.HumanBytes(m.SizeBytes)}, {"Access", map[bool]string{true: "block", false: "filesystem " + m.FsType}[m.Block]},
		{"Parent", orDash(m.Parent)}, {"Created", m.CreatedAt.Format(time.RFC3339)}, {"Completed", m.CompletedAt.Format(time.RFC3339)},
		{"Stored blocks", fmt.Sprintf("%d of %d (%s stored, in %d packs)", len(m.Blocks), (m.SizeBytes+m.BlockSize-1)/m.BlockSize, ui.HumanBytes(m.StoredBytes()), len(packs))},
		{"This run", fmt.Sprintf("read %s, uploaded %s; blocks new %d, unchanged %d, deduplicated %d, empty %d; %.1fs",
			ui.HumanBytes(m.Stats.BytesRead), ui.HumanBytes(m.Stats.BytesUploaded), m.Stats.BlocksNew, m.Stats.BlocksReused, m.Stats.BlocksDeduped, m.Stats.BlocksSkipped, m.Stats.DurationSecond)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], printable(kv[1]))
	}
	if cl := m.Claim; cl != nil { // checked by the store's validation
		pvc := cl.Name
		if cl.Namespace != "" {
			pvc = cl.Namespace + "/" + cl.Name
		}
		request := "-"
		if cl.RequestBytes > 0 {
			request = ui.HumanBytes(cl.RequestBytes)
		}
		for _, kv := range [][2]string{
			{"PVC", orDash(pvc)}, {"StorageClass", orDash(cl.StorageClassName)}, {"Access modes", orDash(strings.Join(cl.AccessModes, ","))},
			{"Volume mode", orDash(cl.VolumeMode)}, {"Requested", request},
		} {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	} else {
		fmt.Fprintf(tw, "PVC:\t- (not recorded)\n")
	}
	return tw.Flush()
}

// printable quotes a string read from a store if it holds anything a
// terminal would interpret.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func (c *backupCLI) verify(args []string) error {
	var refs []backup.BackupRef
	for _, a := range args {
		ref, err := parseRef(a)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
	}
	bar := newProgressBar("verify")
	rep, err := c.repo.Verify(c.ctx, refs, bar.update)
	bar.finish()
	if err != nil {
		return err
	}
	if c.json {
		if err := c.printJSON(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.out, "verified %d backups: %d blocks, %s\n", rep.Backups, rep.Blocks, ui.HumanBytes(rep.Bytes))
		for _, d := range rep.DamagedManifests {
			fmt.Fprintf(c.out, "DAMAGED manifest of backup %s/%s (%s): %v\n", d.VolumeID, d.BackupID, d.Key, d.Err)
		}
		for _, d := range rep.NewerManifests {
			fmt.Fprintf(c.out, "not checked: backup %s/%s has a newer format (%v)\n", d.VolumeID, d.BackupID, d.Err)
		}
		for _, p := range rep.Problems {
			fmt.Fprintf(c.out, "DAMAGED backup %s/%s block at offset %d (hash %s) in pack %s at %d: %s\n", p.VolumeID, p.BackupID, p.Offset, p.Hash, p.Pack, p.PackOffset, p.Error)
		}
		for _, b := range rep.DamagedBackups {
			fmt.Fprintf(c.out, "DAMAGED backup %s/%s cannot be restored\n", b.VolumeID, b.BackupID)
		}
	}
	if rep.Damaged() {
		return &cliError{exitDamaged, fmt.Errorf("%d damaged backups: %d damaged manifests, %d damaged block references", len(rep.DamagedBackups), len(rep.DamagedManifests), len(rep.Problems))}
	}
	return nil
}

func (c *backupCLI) restore(args []string, to string) error {
	if len(args) != 1 || to == "" {
		return &cliError{exitUsage, errors.New("restore takes one VOLUME/BACKUP and --to FILE")}
	}
	ref, err := parseRef(args[0])
	if err != nil {
		return err
	}
	m, err := c.repo.Manifest(c.ctx, ref.VolumeID, ref.BackupID)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	bar := newProgressBar("restore")
	err = c.repo.Restore(c.ctx, m, to, bar.update)
	bar.finish()
	if err != nil {
		os.Remove(to)
		return err
	}
	fmt.Fprintf(c.out, "restored %s (%s) into %s\n", m.ID, ui.HumanBytes(m.SizeBytes), to)
	return nil
}

func (c *backupCLI) delete(args []string) error {
	if len(args) == 0 {
		return &cliError{exitUsage, errors.New("delete takes at least one VOLUME/BACKUP")}
	}
	for _, a := range args {
		ref, err := parseRef(a)
		if err != nil {
			return err
		}
		if err := c.repo.Delete(c.ctx, ref.VolumeID, ref.BackupID); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "deleted %s/%s\n", ref.VolumeID, ref.BackupID)
	}
	return nil
}

func (c *backupCLI) gc(minAge time.Duration) error {
	rep, err := c.repo.GC(c.ctx, minAge)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(rep)
	}
	fmt.Fprintf(c.out, "packs: %d, referenced %d, deleted %d (%s), kept as too young %d; stale locks removed %d\n",
		rep.Packs, rep.Referenced, rep.Deleted, ui.HumanBytes(rep.BytesDeleted), rep.TooYoung, rep.StaleLocks)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// progressBar draws progress with throughput on stderr: a redrawn bar on a
// terminal, a line every few seconds otherwise.
type progressBar struct {
	label string
	start time.Time
	tty   bool
	last  time.Time
	shown bool
}

func newProgressBar(label string) *progressBar {
	_, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS)
	return &progressBar{label: label, start: time.Now(), tty: err == nil}
}

func (p *progressBar) update(pr backup.Progress) {
	now := time.Now()
	if !p.tty && now.Sub(p.last) < 5*time.Second && pr.BytesDone < pr.BytesTotal {
		return
	}
	if p.tty && now.Sub(p.last) < 200*time.Millisecond && pr.BytesDone < pr.BytesTotal {
		return
	}
	p.last = now
	p.shown = true
	frac := 1.0
	if pr.BytesTotal > 0 {
		frac = float64(pr.BytesDone) / float64(pr.BytesTotal)
	}
	rate := float64(pr.BytesDone) / max(now.Sub(p.start).Seconds(), 1e-3)
	const width = 30
	n := int(frac * width)
	bar := strings.Repeat("=", n) + strings.Repeat(" ", width-n)
	line := fmt.Sprintf("%s [%s] %5.1f%% %s / %s  %s/s", p.label, bar, frac*100, ui.HumanBytes(pr.BytesDone), ui.HumanBytes(pr.BytesTotal), ui.HumanBytes(int64(rate)))
	if p.tty {
		fmt.Fprint(os.Stderr, "\r"+line)
	} else {
		fmt.Fprintln(os.Stderr, line)
	}
}

func (p *progressBar) finish() {
	if p.tty && p.shown {
		fmt.Fprintln(os.Stderr)
	}
}
