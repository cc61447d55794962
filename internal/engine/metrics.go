package engine

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics exports the engine's state to Prometheus: clone mode and
// the data root's capacity as the engine accounts for it.
func RegisterMetrics(reg prometheus.Registerer, e *Engine) {
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
