package policy

import (
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

func policyObj(name string, mod func(*cairnv1.ProtectionPolicySpec)) *cairnv1.ProtectionPolicy {
	p := &cairnv1.ProtectionPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cairnv1.ProtectionPolicySpec{Schedule: "@hourly", SnapshotClassName: "c", Retain: 3}}
	if mod != nil {
		mod(&p.Spec)
	}
	return p
}

func TestAppliesTo(t *testing.T) {
	sel := func(s *cairnv1.ProtectionPolicySpec) {
		s.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"backup": "yes"}}
	}
	only := func(s *cairnv1.ProtectionPolicySpec) { sel(s); s.Namespaces = []string{"shop"} }
	labelled := Claim{Namespace: "shop", Name: "a", Labels: map[string]string{"backup": "yes"}}
	plain := Claim{Namespace: "crm", Name: "b"}
	for _, c := range []struct {
		name   string
		policy *cairnv1.ProtectionPolicy
		claim  Claim
		want   bool
	}{
		{"selector matches", policyObj("p", sel), labelled, true},
		{"selector does not match", policyObj("p", sel), plain, false},
		{"namespaces narrow the selector", policyObj("p", only), Claim{Namespace: "crm", Labels: labelled.Labels}, false},
		{"namespaces allow", policyObj("p", only), labelled, true},
		{"no selector takes nothing", policyObj("p", nil), plain, false},
		{"the StorageClass names it", policyObj("p", nil), Claim{Namespace: "x", ClassPolicy: "p"}, true},
		{"the VAC names it", policyObj("p", nil), Claim{Namespace: "x", ClassPolicy: "q", VACPolicy: "p"}, true},
		{"the VAC overrides the StorageClass", policyObj("q", nil), Claim{Namespace: "x", ClassPolicy: "q", VACPolicy: "p"}, false},
		{"namespaces narrow a class's name too", func() *cairnv1.ProtectionPolicy {
			return policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.Namespaces = []string{"shop"} })
		}(), Claim{Namespace: "crm", ClassPolicy: "p"}, false},
		{"default takes what names none", policyObj("default", nil), plain, true},
		{"default leaves an opt-out", policyObj("default", nil), Claim{Namespace: "crm", ClassPolicy: "none"}, false},
		{"default leaves another policy's", policyObj("default", nil), Claim{Namespace: "crm", ClassPolicy: "p"}, false},
		{"default's selector narrows", policyObj("default", sel), plain, false},
		{"default's selector allows", policyObj("default", sel), labelled, true},
	} {
		p, err := Check(c.policy)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := p.AppliesTo(c.claim); got != c.want {
			t.Errorf("%s: AppliesTo = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCheckNamesTheField(t *testing.T) {
	for _, c := range []struct {
		p     *cairnv1.ProtectionPolicy
		field string
	}{
		{policyObj("none", nil), "metadata.name"},
		{policyObj(strings.Repeat("a", 64), nil), "metadata.name"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.Schedule = "nope" }), "spec.schedule"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.Retain = 0 }), "spec.retain"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.Concurrency = 101 }), "spec.concurrency"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.MaxAge = &metav1.Duration{Duration: -time.Hour} }), "spec.maxAge"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) { s.SnapshotClassName = "" }), "spec.snapshotClassName"},
		{policyObj("p", func(s *cairnv1.ProtectionPolicySpec) {
			s.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}}
		}), "spec.selector"},
	} {
		if _, err := Check(c.p); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Check: %v, want an error naming %s", err, c.field)
		}
	}
}

func TestSnapshotName(t *testing.T) {
	slot := time.Date(2026, 12, 4, 19, 30, 0, 0, time.UTC)
	if got := SnapshotName("mysql-pvc", "hourly", slot); got != "mysql-pvc.hourly.20261204-193000" {
		t.Errorf("SnapshotName = %q", got)
	}
	if SnapshotName("db-daily", "x", slot) == SnapshotName("db", "daily-x", slot) {
		t.Error("two (PVC, policy) pairs give the same snapshot name")
	}
	long := strings.Repeat("a", 250)
	a, b := SnapshotName(long, "p", slot), SnapshotName(long+"b", "p", slot)
	for _, n := range []string{a, b} {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 || len(n) > 253 {
			t.Errorf("SnapshotName of a long PVC = %q (%d): %v", n, len(n), errs)
		}
	}
	if a == b {
		t.Error("two long PVC names give the same snapshot name")
	}
	if SnapshotName("x", "p", slot) == SnapshotName("x", "p", slot.Add(time.Minute)) {
		t.Error("two schedule times give the same snapshot name")
	}
}

func TestPrune(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	at := func(h int) time.Time { return now.Add(-time.Duration(h) * time.Hour) }
	for _, c := range []struct {
		name   string
		snaps  []Snap
		retain int
		maxAge time.Duration
		want   []string
	}{
		{"keep the newest retain ready", []Snap{{"s1", at(5), true, false}, {"s2", at(4), true, false}, {"s3", at(3), true, false}, {"s4", at(2), true, false}, {"s5", at(1), true, false}}, 3, 0, []string{"s2", "s1"}},
		{"one in progress stays", []Snap{{"s1", at(3), true, false}, {"s2", at(2), true, false}, {"new", at(0), false, false}}, 1, 0, []string{"s1"}},
		{"a failed one older than a ready one goes", []Snap{{"bad", at(2), false, false}, {"ok", at(1), true, false}}, 3, 0, []string{"bad"}},
		{"failed ones never push out ready ones", []Snap{{"ok", at(5), true, false}, {"f1", at(3), false, false}, {"f2", at(2), false, false}, {"f3", at(1), false, false}}, 1, 0, nil},
		{"max age, but never the newest ready", []Snap{{"old1", at(50), true, false}, {"old2", at(49), true, false}}, 5, 24 * time.Hour, []string{"old1"}},
		{"one being restored from stays", []Snap{{"s1", at(3), true, true}, {"s2", at(2), true, false}, {"s3", at(1), true, false}}, 1, 0, []string{"s2"}},
	} {
		got := Prune(c.snaps, c.retain, c.maxAge, now)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: Prune = %v, want %v", c.name, got, c.want)
		}
	}
}
