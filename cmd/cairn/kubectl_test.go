package main

import (
	"bytes"
	"strings"
	"testing"
)

// The plugin's tables print what objects say, and objects are untrusted:
// control characters (a terminal escape, a tab or newline that would
// break the columns) come out as '?'.
func TestTableStripsControlCharacters(t *testing.T) {
	tb := &table{all: true}
	tb.head("NAMESPACE", "NAME", "|WIDE")
	tb.row("default", "evil\x1b]0;owned\x07\tname\nnext", "hidden")
	var out bytes.Buffer
	if err := tb.print(&out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if strings.ContainsAny(got, "\x1b\x07\t") || strings.Count(got, "\n") != 2 {
		t.Fatalf("control characters reached the terminal: %q", got)
	}
	if !strings.Contains(got, "evil?]0;owned??name?next") || strings.Contains(got, "hidden") {
		t.Errorf("table:\n%s", got)
	}
}
