package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
)

// ioBuf is the buffer size of the raw read and write baselines.
const ioBuf = 4 * mib

// mibps converts bytes in d to MiB/s.
func mibps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / float64(mib) / d.Seconds()
}

// dropCaches is `sync; echo 3 > /proc/sys/vm/drop_caches`: what follows
// reads from the disk, not from the page cache.
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	return nil
}

// chacha returns the ChaCha8 stream of (seed, stream, index): the content
// of a chunk depends only on these, not on which goroutine makes it.
func chacha(seed uint64, stream, index uint64) *rand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[0:], seed)
	binary.LittleEndian.PutUint64(s[8:], stream)
	binary.LittleEndian.PutUint64(s[16:], index)
	copy(s[24:], "cairnbak")
	return rand.NewChaCha8(s)
}

// fillRandom fills b with incompressible pseudo-random bytes, in parallel.
func fillRandom(b []byte, seed, stream uint64) {
	const part = 16 * mib
	n := (int64(len(b)) + part - 1) / part
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				lo, hi := i*part, min((i+1)*part, int64(len(b)))
				_, _ = chacha(seed, stream, uint64(i)).Read(b[lo:hi])
			}
		}()
	}
	wg.Wait()
}

// writeRandom creates path and fills it with size bytes of pseudo-random
// data: generated in parallel, written in order with 16 MiB sequential
// writes, then fsynced. It returns how long the write took.
func writeRandom(ctx context.Context, path string, size int64, seed, stream uint64) (time.Duration, error) {
	const chunk = 16 * mib
	n := (size + chunk - 1) / chunk
	workers := int64(runtime.GOMAXPROCS(0))
	stop := make(chan struct{})
	defer close(stop)
	free := make(chan []byte, 2*workers+1)
	for range cap(free) {
		free <- make([]byte, chunk)
	}
	ready := make([]chan []byte, workers)
	for w := range workers {
		ready[w] = make(chan []byte, 1)
		go func() {
			for i := w; i < n; i += workers {
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				l := min(chunk, size-i*chunk)
				_, _ = chacha(seed, stream, uint64(i)).Read(buf[:l])
				select {
				case ready[w] <- buf[:l]:
				case <-stop:
					return
				}
			}
		}()
	}
	start := time.Now()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		buf := <-ready[i%workers]
		if _, err := f.Write(buf); err != nil {
			return 0, fmt.Errorf("write %s: %w", path, err)
		}
		free <- buf[:cap(buf)]
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	return time.Since(start), f.Close()
}

// rawRead reads path from start to end with 4 MiB buffered reads.
func rawRead(ctx context.Context, path string) (int64, time.Duration, error) {
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, ioBuf)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, 0, err
		}
		n, err := f.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, 0, fmt.Errorf("read %s: %w", path, err)
		}
	}
	return total, time.Since(start), nil
}

// rawWrite creates path and writes size bytes to it with 4 MiB sequential
// writes taken from src (cycled), then fsyncs it; the time includes the
// fsync.
func rawWrite(ctx context.Context, path string, size int64, src []byte) (time.Duration, error) {
	start := time.Now()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		p := off % int64(len(src))
		l := min(ioBuf, size-off, int64(len(src))-p)
		if _, err := f.Write(src[p : p+l]); err != nil {
			return 0, fmt.Errorf("write %s: %w", path, err)
		}
		off += l
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	return time.Since(start), f.Close()
}

// prepareRates measures backup.PrepareBlock (BLAKE3 + zstd, what a backup
// does to each block it uploads) over total bytes of in-memory random
// 4 MiB blocks with GOMAXPROCS workers, reps times, in MiB/s.
func prepareRates(total int64, reps int, seed uint64) []float64 {
	bs := int64(backup.DefaultBlockSize)
	nblocks := max(total/bs, 1)
	data := make([]byte, nblocks*bs)
	fillRandom(data, seed, 99)
	workers := runtime.GOMAXPROCS(0)
	pass := func() time.Duration {
		var next atomic.Int64
		var stored atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= nblocks {
						return
					}
					_, out, _ := backup.PrepareBlock(data[i*bs : (i+1)*bs])
					stored.Add(int64(len(out)))
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	// Warm the encoder pools and the CPU.
	for range workers {
		backup.PrepareBlock(data[:bs])
	}
	var rates []float64
	for range reps {
		rates = append(rates, mibps(int64(len(data)), pass()))
	}
	return rates
}

// hashFile returns the SHA-256 of a file's content.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, ioBuf)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// diskUsage is the space the files under dir occupy on disk.
func diskUsage(dir string) (files int, bytes int64) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			files++
			bytes += st.Blocks * 512
		}
		return nil
	})
	return files, bytes
}

// trim returns blocks freed on the data root to the image file, so the
// host disk gets deleted files' space back and later writes find the
// image as the first ones did (unallocated).
func trim(mount string) {
	if out, err := exec.Command("fstrim", mount).CombinedOutput(); err != nil {
		benchutil.Logf("fstrim %s: %v: %s (continuing)", mount, err, strings.TrimSpace(string(out)))
	}
}

// otherBenchmarks lists running processes that are benchmarks (a
// `go run ./bench...` or fio), leaving out this process and its ancestors.
func otherBenchmarks() []string {
	self := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !self[pid]; pid = parentPID(pid) {
		self[pid] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || self[pid] {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if strings.Contains(cmd, "go run ./bench") || strings.TrimSpace(string(comm)) == "fio" {
			if len(cmd) > 100 {
				cmd = cmd[:100] + "…"
			}
			out = append(out, fmt.Sprintf("%d: %s", pid, cmd))
		}
	}
	slices.Sort(out)
	return out
}

func parentPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// waitQuiet waits up to limit for other benchmarks to finish and returns
// how long it waited and what was still running.
func waitQuiet(ctx context.Context, limit time.Duration) (time.Duration, []string) {
	start := time.Now()
	for {
		busy := otherBenchmarks()
		if len(busy) == 0 || time.Since(start) >= limit || ctx.Err() != nil {
			return time.Since(start), busy
		}
		benchutil.Logf("waiting for other benchmarks to finish (%s of at most %s): %s",
			time.Since(start).Round(time.Second), limit, strings.Join(busy, "; "))
		select {
		case <-ctx.Done():
		case <-time.After(15 * time.Second):
		}
	}
}

// touchRate maps n bytes of fresh anonymous memory and writes one byte per
// page, twice: the first pass pays the page faults (on a VM whose free
// memory goes back to the host, a fault can cost far more than the
// zeroing), the second does not. Rates in MiB/s.
func touchRate(n int) (first, second float64, err error) {
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	pass := func(v byte) float64 {
		start := time.Now()
		for i := 0; i < n; i += page {
			m[i] = v
		}
		return mibps(int64(n), time.Since(start))
	}
	first = pass(1)
	second = pass(2)
	return first, second, nil
}

// freePageReporting reports whether a virtio balloon with free page
// reporting (VIRTIO_BALLOON_F_REPORTING, feature bit 5) is attached: then
// memory the guest frees is handed back to the host and faulted in again
// on its next use.
func freePageReporting() string {
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*")
	for _, d := range devs {
		id, _ := os.ReadFile(filepath.Join(d, "device"))
		if strings.TrimSpace(string(id)) != "0x0005" {
			continue
		}
		f, _ := os.ReadFile(filepath.Join(d, "features"))
		if len(f) > 5 && f[5] == '1' {
			return "yes (virtio-balloon free page reporting)"
		}
		return "no (virtio-balloon without free page reporting)"
	}
	return "no virtio balloon"
}
