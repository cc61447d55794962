// Package policy runs ProtectionPolicies in the controller: on each
// policy's schedule it creates VolumeSnapshots of the PVCs the policy
// applies to and prunes them beyond its retention (docs/PROTECTION.md).
// It works through Kubernetes objects only and imports no storage code.
package policy

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // time zones without the image's zoneinfo

	"github.com/robfig/cron/v3"
)

// MinEvery is the shortest @every interval a schedule may have.
const MinEvery = time.Minute

// maxCatchUp bounds how far back a due run is looked for: a controller
// that was down longer still runs once, for the latest time in this
// window (a yearly schedule is inside it).
const maxCatchUp = 400 * 24 * time.Hour

// Schedule is a parsed spec.schedule in its spec.timeZone.
type Schedule struct {
	cron cron.Schedule
	loc  *time.Location
}

// ParseSchedule checks a policy's schedule and time zone; errors name
// the field.
func ParseSchedule(spec, timeZone string) (Schedule, error) {
	loc := time.UTC
	if timeZone != "" {
		l, err := time.LoadLocation(timeZone)
		if err != nil || timeZone == "Local" {
			return Schedule{}, fmt.Errorf("spec.timeZone %q: not an IANA time zone name", timeZone)
		}
		loc = l
	}
	if strings.Contains(spec, "TZ=") {
		return Schedule{}, fmt.Errorf("spec.schedule %q: set the time zone in spec.timeZone, not in the schedule", spec)
	}
	c, err := cron.ParseStandard(spec)
	if err != nil {
		return Schedule{}, fmt.Errorf("spec.schedule %q: %v (want 5 cron fields, a macro such as @hourly, or @every <duration>)", spec, err)
	}
	if every, ok := c.(cron.ConstantDelaySchedule); ok && every.Delay < MinEvery {
		return Schedule{}, fmt.Errorf("spec.schedule %q: @every must be at least %s", spec, MinEvery)
	}
	s := Schedule{cron: c, loc: loc}
	if s.Next(time.Now()).IsZero() {
		return Schedule{}, fmt.Errorf("spec.schedule %q: never fires", spec)
	}
	return s, nil
}

// Next is the first schedule time after t (zero if none in five years).
func (s Schedule) Next(t time.Time) time.Time {
	n := s.cron.Next(t.In(s.loc))
	if n.IsZero() {
		return n
	}
	return n.UTC()
}

// Due returns the latest schedule time after since and not after now:
// the one run owed when since was the last one done. Several passed
// times owe one run, not one each. It looks back from now in growing
// windows, so a schedule every minute owed a run for a year costs an
// hour's worth of steps, not a year's.
func (s Schedule) Due(since, now time.Time) (time.Time, bool) {
	if floor := now.Add(-maxCatchUp); since.Before(floor) {
		since = floor
	}
	for _, w := range []time.Duration{time.Hour, 24 * time.Hour, 31 * 24 * time.Hour, maxCatchUp} {
		from := now.Add(-w)
		if !from.After(since) {
			return s.latest(since, now)
		}
		if t, ok := s.latest(from, now); ok {
			return t, true
		}
	}
	return s.latest(since, now)
}

// latest is the last schedule time in (from, now].
func (s Schedule) latest(from, now time.Time) (time.Time, bool) {
	t := s.Next(from)
	if t.IsZero() || t.After(now) {
		return time.Time{}, false
	}
	for {
		n := s.Next(t)
		if n.IsZero() || n.After(now) {
			return t, true
		}
		t = n
	}
}

// Interval is the time between the next two schedule times after t.
func (s Schedule) Interval(t time.Time) time.Duration {
	a := s.Next(t)
	if a.IsZero() {
		return 0
	}
	b := s.Next(a)
	if b.IsZero() {
		return 0
	}
	return b.Sub(a)
}
