package policy

import (
	"strings"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParseScheduleErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ spec, tz, field string }{
		{"* * *", "", "spec.schedule"},
		{"61 * * * *", "", "spec.schedule"},
		{"@every 10s", "", "spec.schedule"},
		{"CRON_TZ=UTC * * * * *", "", "spec.schedule"},
		{"0 0 30 2 *", "", "never fires"},
		{"@hourly", "Mars/Olympus", "spec.timeZone"},
		{"@hourly", "Local", "spec.timeZone"},
	} {
		if _, err := ParseSchedule(c.spec, c.tz); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("ParseSchedule(%q, %q) = %v, want an error naming %s", c.spec, c.tz, err, c.field)
		}
	}
	for _, ok := range []string{"* * * * *", "*/5 * * * *", "30 2 * * 1-5", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@every 15m"} {
		if _, err := ParseSchedule(ok, "Europe/Berlin"); err != nil {
			t.Errorf("ParseSchedule(%q): %v", ok, err)
		}
	}
}

func TestDueRunsOnceForManyMissedTimes(t *testing.T) {
	s, err := ParseSchedule("* * * * *", "")
	if err != nil {
		t.Fatal(err)
	}
	since := mustTime(t, "2026-12-04T10:00:00Z")
	for _, c := range []struct {
		now  string
		want string // "" = not due
	}{
		{"2026-12-04T10:00:59Z", ""},
		{"2026-12-04T10:01:00Z", "2026-12-04T10:01:00Z"},
		{"2026-12-04T10:01:30Z", "2026-12-04T10:01:00Z"},
		{"2026-12-04T10:07:10Z", "2026-12-04T10:07:00Z"}, // 7 missed: one run, for the latest
		{"2027-12-04T10:07:10Z", "2027-12-04T10:07:00Z"}, // a year down
		{"2026-12-04T12:00:00Z", "2026-12-04T12:00:00Z"}, // exactly on a time
	} {
		got, due := s.Due(since, mustTime(t, c.now))
		if c.want == "" {
			if due {
				t.Errorf("Due at %s = %s, want not due", c.now, got)
			}
			continue
		}
		if !due || !got.Equal(mustTime(t, c.want)) {
			t.Errorf("Due at %s = %s %v, want %s", c.now, got, due, c.want)
		}
	}
}

func TestDueLooksBackFarEnough(t *testing.T) {
	yearly, _ := ParseSchedule("@yearly", "")
	since := mustTime(t, "2026-01-01T00:00:00Z")
	got, due := yearly.Due(since, mustTime(t, "2027-03-01T00:00:00Z"))
	if !due || !got.Equal(mustTime(t, "2027-01-01T00:00:00Z")) {
		t.Errorf("@yearly Due = %s %v", got, due)
	}
	if _, due := yearly.Due(mustTime(t, "2027-01-01T00:00:00Z"), mustTime(t, "2027-03-01T00:00:00Z")); due {
		t.Error("@yearly due twice for one time")
	}
	minutely, _ := ParseSchedule("* * * * *", "")
	start := time.Now()
	for range 100 {
		minutely.Due(since, since.Add(399*24*time.Hour))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("100 catch-ups of a minutely schedule over 399 days took %s", d)
	}
}

func TestScheduleTimeZoneAndInterval(t *testing.T) {
	s, err := ParseSchedule("30 2 * * *", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// 02:30 in Berlin in winter is 01:30 UTC.
	if got := s.Next(mustTime(t, "2026-12-04T00:00:00Z")); !got.Equal(mustTime(t, "2026-12-04T01:30:00Z")) {
		t.Errorf("Next = %s, want 01:30 UTC", got)
	}
	if got := s.Interval(mustTime(t, "2026-12-04T00:00:00Z")); got != 24*time.Hour {
		t.Errorf("Interval = %s", got)
	}
	every, _ := ParseSchedule("@every 15m", "")
	if got := every.Interval(time.Now()); got != 15*time.Minute {
		t.Errorf("@every 15m interval = %s", got)
	}
}
