package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// fioJob is one fio invocation.
type fioJob struct {
	Name     string
	File     string
	RW       string // randread, randwrite, read, write
	BS       string // 4k, 1m
	Size     int64
	Engine   string
	IODepth  int
	Runtime  time.Duration // 0: run until Size is done once
	IOSize   int64         // > 0: stop after this many bytes (spread over Size)
	Ramp     time.Duration
	JSONPath string
}

// fioResult is what the benchmark keeps of fio's JSON report.
type fioResult struct {
	IOPS     float64
	BwBytes  float64 // bytes per second
	MeanLatU float64 // mean completion latency, microseconds
	Elapsed  time.Duration
}

// MiBps returns the bandwidth in MiB/s.
func (r fioResult) MiBps() float64 { return r.BwBytes / (1 << 20) }

type fioStats struct {
	IOPS    float64 `json:"iops"`
	BwBytes float64 `json:"bw_bytes"`
	IOBytes int64   `json:"io_bytes"`
	ClatNs  struct {
		Mean float64 `json:"mean"`
	} `json:"clat_ns"`
}

type fioReport struct {
	Version string `json:"fio version"`
	Jobs    []struct {
		Name  string   `json:"jobname"`
		Error int      `json:"error"`
		Read  fioStats `json:"read"`
		Write fioStats `json:"write"`
	} `json:"jobs"`
}

// run executes the job and parses its JSON report.
func (j fioJob) run(ctx context.Context) (fioResult, error) {
	args := []string{
		"--name=" + j.Name,
		"--filename=" + j.File,
		"--rw=" + j.RW,
		"--bs=" + j.BS,
		"--size=" + strconv.FormatInt(j.Size, 10),
		"--direct=1",
		"--ioengine=" + j.Engine,
		"--iodepth=" + strconv.Itoa(j.IODepth),
		"--numjobs=1",
		"--group_reporting",
		"--fallocate=none",
		"--randrepeat=0",
		"--norandommap",
		"--output-format=json",
		"--output=" + j.JSONPath,
	}
	if j.IOSize > 0 {
		args = append(args, "--io_size="+strconv.FormatInt(j.IOSize, 10))
	}
	if j.Runtime > 0 {
		args = append(args, "--time_based", fmt.Sprintf("--runtime=%ds", int(j.Runtime.Seconds())))
		if j.Ramp > 0 {
			args = append(args, fmt.Sprintf("--ramp_time=%ds", int(j.Ramp.Seconds())))
		}
	}
	if err := os.MkdirAll(filepath.Dir(j.JSONPath), 0o755); err != nil {
		return fioResult{}, err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "fio", args...)
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if err != nil {
		return fioResult{}, fmt.Errorf("fio %s on %s: %v: %s", j.Name, j.File, err, strings.TrimSpace(string(out)))
	}
	b, err := os.ReadFile(j.JSONPath)
	if err != nil {
		return fioResult{}, err
	}
	// fio sometimes prints notes before the JSON document; skip them.
	if i := strings.IndexByte(string(b), '{'); i > 0 {
		b = b[i:]
	}
	var rep fioReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return fioResult{}, fmt.Errorf("parse fio report %s: %w", j.JSONPath, err)
	}
	if len(rep.Jobs) != 1 {
		return fioResult{}, fmt.Errorf("fio report %s: %d jobs, want 1", j.JSONPath, len(rep.Jobs))
	}
	job := rep.Jobs[0]
	if job.Error != 0 {
		return fioResult{}, fmt.Errorf("fio %s on %s: job error %d", j.Name, j.File, job.Error)
	}
	st := job.Read
	if strings.Contains(j.RW, "write") {
		st = job.Write
	}
	if st.IOBytes == 0 {
		return fioResult{}, fmt.Errorf("fio %s on %s: no I/O done", j.Name, j.File)
	}
	return fioResult{IOPS: st.IOPS, BwBytes: st.BwBytes, MeanLatU: st.ClatNs.Mean / 1000, Elapsed: elapsed}, nil
}

// fioVersion returns `fio --version`.
func fioVersion() string {
	out, err := exec.Command("fio", "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}
