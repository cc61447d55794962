package engine

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics exports the engine's state to Prometheus: clone mode and
// the data root's capacity as the engine accounts for it, and the health
// problems of the data root and of each volume (docs/HEALTH.md).
func RegisterMetrics(reg prometheus.Registerer, e *Engine) {
	reg.MustRegister(healthCollector{e})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cairn_reflink_enabled",
		Help: "1 when snapshots and clones are reflinks, 0 when they are sparse copies.",
	}, func() float64 {
		if e.reflink {
			return 1
		}
		return 0
	}))
	capGauge := func(name, help string, pick func(Capacity) int64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			c, err := e.Capacity()
			if err != nil {
				return -1
			}
			return float64(pick(c))
		}))
	}
	capGauge("cairn_data_root_free_bytes", "Free bytes on the data root's file system.", func(c Capacity) int64 { return c.FreeBytes })
	capGauge("cairn_data_root_reserved_bytes", "Bytes existing volumes may still allocate.", func(c Capacity) int64 { return c.ReservedBytes })
	capGauge("cairn_data_root_available_bytes", "Bytes available for new volumes.", func(c Capacity) int64 { return c.AvailableBytes })
}

var (
	volumeHealthDesc = prometheus.NewDesc("cairn_volume_health_problem",
		"1 for each health problem a volume has now (type Degraded, Inaccessible or DataLoss); absent when healthy.",
		[]string{"volume_id", "pvc_namespace", "pvc_name", "type", "reason"}, nil)
	storageHealthDesc = prometheus.NewDesc("cairn_data_root_health_problem",
		"1 for each health problem the data root has now; absent when healthy.",
		[]string{"type", "reason"}, nil)
)

// HealthCacheAge is how old a pass of the volume health checks a metrics
// scrape may answer from (the node agent runs a pass every heartbeat, 30 s
// by default); an older one is run again.
const HealthCacheAge = 30 * time.Second

// healthCollector answers from the last pass of the health checks.
type healthCollector struct{ e *Engine }

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- volumeHealthDesc
	ch <- storageHealthDesc
}

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	for _, p := range c.e.StorageHealth(ctx) {
		ch <- prometheus.MustNewConstMetric(storageHealthDesc, prometheus.GaugeValue, 1, string(p.Kind), p.Reason)
	}
	all, err := c.e.AllVolumeHealth(ctx, HealthCacheAge)
	if err != nil {
		return
	}
	for id, problems := range all {
		var params map[string]string
		if m, err := c.e.loadVolume(id); err == nil {
			params = m.Parameters
		}
		for _, p := range problems {
			ch <- prometheus.MustNewConstMetric(volumeHealthDesc, prometheus.GaugeValue, 1, id,
				params["csi.storage.k8s.io/pvc/namespace"], params["csi.storage.k8s.io/pvc/name"], string(p.Kind), p.Reason)
		}
	}
}
