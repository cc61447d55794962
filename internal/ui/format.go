package ui

import (
	"fmt"
	"html/template"
	"net/url"
	"sort"
	"strings"
	"time"
)

// filterSort applies the volume list's query: q (a substring of
// namespace/name, node, class or state), ns (a namespace), sort (name,
// size, used, node, state, backup; a leading "-" reverses).
func filterSort(vs []Volume, q url.Values) []Volume {
	needle, ns := strings.ToLower(q.Get("q")), q.Get("ns")
	var out []Volume
	for _, v := range vs {
		hay := strings.ToLower(strings.Join([]string{v.Namespace + "/" + v.Name, v.Node, v.Class, v.State, v.Mode, v.FsType}, " "))
		if (ns == "" || v.Namespace == ns) && strings.Contains(hay, needle) {
			out = append(out, v)
		}
	}
	key := q.Get("sort")
	desc := strings.HasPrefix(key, "-")
	key = strings.TrimPrefix(key, "-")
	less := func(a, b Volume) bool { return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name }
	switch key {
	case "size":
		less = func(a, b Volume) bool { return a.SizeBytes < b.SizeBytes }
	case "used":
		less = func(a, b Volume) bool { return a.UsedBytes < b.UsedBytes }
	case "node":
		less = func(a, b Volume) bool { return a.Node < b.Node }
	case "state":
		less = func(a, b Volume) bool { return a.State < b.State }
	case "backup":
		less = func(a, b Volume) bool { return backupTime(a).Before(backupTime(b)) }
	}
	sort.SliceStable(out, func(i, j int) bool {
		if desc {
			return less(out[j], out[i])
		}
		return less(out[i], out[j])
	})
	return out
}

func backupTime(v Volume) time.Time {
	if v.LastBackup == nil {
		return time.Time{}
	}
	return *v.LastBackup
}

func funcs(now func() time.Time) template.FuncMap {
	return template.FuncMap{
		"bytes": HumanBytes,
		"age": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return HumanAge(now().Sub(t))
		},
		"ageptr": func(t *time.Time) string {
			if t == nil {
				return "never"
			}
			return HumanAge(now().Sub(*t)) + " ago"
		},
		"pct": func(part, whole int64) int64 {
			if whole <= 0 {
				return 0
			}
			return part * 100 / whole
		},
		"sortlink": func(q url.Values, key string) string {
			v := url.Values{}
			for k, vals := range q {
				v[k] = vals
			}
			if q.Get("sort") == key {
				key = "-" + key
			}
			v.Set("sort", key)
			return "/volumes?" + v.Encode()
		},
		"path":   url.PathEscape,
		"redact": redact,
		"evtime": eventTime,
		"states": states,
		"stale":  func(t time.Time) bool { return now().Sub(t) > 2*time.Minute },
		"since":  func(t time.Time) time.Duration { return now().Sub(t) },
		"old": func(t *time.Time, d string) bool {
			dur, _ := time.ParseDuration(d)
			return t == nil || now().Sub(*t) > dur
		},
	}
}

// states counts volumes by state, in a fixed order.
func states(vs []Volume) []struct {
	State string
	N     int
} {
	count := map[string]int{}
	for _, v := range vs {
		count[v.State]++
	}
	var out []struct {
		State string
		N     int
	}
	for _, s := range []string{"Ready", "Pending", "Unhealthy", "Failed"} {
		out = append(out, struct {
			State string
			N     int
		}{s, count[s]})
		delete(count, s)
	}
	for s, n := range count {
		out = append(out, struct {
			State string
			N     int
		}{s, n})
	}
	return out
}

// HumanBytes is n in binary units, as the UI and the backup CLI print
// sizes: 512 B, 1.5 MiB, 2.0 GiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// HumanAge is d as kubectl prints ages: 42s, 5m, 7h, 3d.
func HumanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// redact drops a URL's user information (a password may be in it).
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("…")
	}
	return u.String()
}
