package policy

import "github.com/prometheus/client_golang/prometheus"

var (
	lastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_protection_last_success_timestamp_seconds",
		Help: "Creation time of the PVC's newest ready VolumeSnapshot made by the ProtectionPolicy: its recovery point.",
	}, []string{"policy", "namespace", "persistentvolumeclaim"})
	scheduleInterval = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_protection_schedule_interval_seconds",
		Help: "Time between the ProtectionPolicy's next two schedule times.",
	}, []string{"policy"})
	runs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_protection_runs_total",
		Help: "ProtectionPolicy runs; result failed when any PVC's snapshot failed.",
	}, []string{"policy", "result"})
)

// RegisterMetrics adds the policy metrics to reg.
func RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(lastSuccess, scheduleInterval, runs)
}
