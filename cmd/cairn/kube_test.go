package main

import (
	"context"
	"testing"

	"github.com/cairn-csi/cairn/internal/control/policy"
	"github.com/cairn-csi/cairn/internal/engine"
)

// TestKubeMetricsGather checks that /metrics of cairn controller and
// cairn node can be gathered: Cairn's registry and controller-runtime's
// must not both hold a collector (a duplicate fails every scrape).
func TestKubeMetricsGather(t *testing.T) {
	for name, reg := range map[string]func() error{
		"controller": func() error {
			reg := metricsRegistry()
			policy.RegisterMetrics(reg)
			_, err := kubeGatherers(reg).Gather()
			return err
		},
		"node": func() error {
			eng, err := engine.Open(context.Background(), engine.Config{DataRoot: t.TempDir(), CgroupRoot: "none"})
			if err != nil {
				return err
			}
			defer eng.Close()
			reg := metricsRegistry()
			engine.RegisterMetrics(reg, eng)
			_, err = kubeGatherers(reg).Gather()
			return err
		},
	} {
		if err := reg(); err != nil {
			t.Errorf("%s metrics: %v", name, err)
		}
	}
}
