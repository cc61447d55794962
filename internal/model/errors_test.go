package model

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestKindTable(t *testing.T) {
	for k, info := range kinds {
		err := Errorf(k, "volume %s: broken", "v-1")
		if err.Error() != "volume v-1: broken" {
			t.Errorf("%v: text %q, want the message alone", k, err)
		}
		if !errors.Is(err, k) || KindOf(err) != k || Code(err) != info.code || Reason(err) != info.reason || Final(err) != info.final {
			t.Errorf("%v: Is %v, KindOf %v, Code %v, Reason %q, Final %v", k, errors.Is(err, k), KindOf(err), Code(err), Reason(err), Final(err))
		}
		// A reported reason comes back as the same kind, with the message.
		back := FromReason(info.reason, "msg")
		if KindOf(back) != k || back.Error() != "msg" {
			t.Errorf("FromReason(%q) = %v of kind %v, want kind %v", info.reason, back, KindOf(back), k)
		}
		for other := range kinds {
			if other != k && errors.Is(err, other) {
				t.Errorf("%v also matches %v", k, other)
			}
		}
	}
	if len(kinds) != 8 {
		t.Errorf("%d kinds in the table, want 8", len(kinds))
	}
}

func TestKindOfChains(t *testing.T) {
	cause := &os.PathError{Op: "open", Path: "/x", Err: os.ErrNotExist}
	err := Errorf(ErrUnavailable, "backup target: %w", cause)
	if !errors.Is(err, os.ErrNotExist) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("%v: the cause must stay reachable", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != "/x" {
		t.Errorf("errors.As through %v failed", err)
	}
	// The outermost kind wins.
	inner := Errorf(ErrNotFound, "snapshot gone")
	outer := Errorf(ErrFailedPrecondition, "restore: %w", inner)
	if KindOf(outer) != ErrFailedPrecondition || Code(outer) != codes.FailedPrecondition {
		t.Errorf("KindOf(%v) = %v, want FailedPrecondition", outer, KindOf(outer))
	}
	wrapped := fmt.Errorf("create volume: %w", outer)
	if KindOf(wrapped) != ErrFailedPrecondition {
		t.Errorf("a plain wrapper hides the kind: %v", KindOf(wrapped))
	}
	// fmt's "%w: %v" with a bare kind, the older style, still maps.
	if Code(fmt.Errorf("%w: disk gone", ErrUnavailable)) != codes.Unavailable {
		t.Error("bare kind not mapped")
	}
	multi := fmt.Errorf("%w and %w", errors.New("plain"), Errorf(ErrAborted, "busy"))
	if KindOf(multi) != ErrAborted {
		t.Errorf("KindOf of a multi-wrap = %v, want Aborted", KindOf(multi))
	}
}

func TestCodesWithoutKind(t *testing.T) {
	for err, want := range map[error]codes.Code{
		errors.New("disk on fire"):                               codes.Internal,
		fmt.Errorf("call: %w", context.DeadlineExceeded):         codes.DeadlineExceeded,
		fmt.Errorf("call: %w", context.Canceled):                 codes.Canceled,
		Errorf(ErrAborted, "lock: %w", context.DeadlineExceeded): codes.Aborted,
	} {
		if got := Code(err); got != want {
			t.Errorf("Code(%v) = %v, want %v", err, got, want)
		}
	}
	if Reason(errors.New("x")) != ReasonInternal || Final(errors.New("x")) {
		t.Error("an error without a kind is Internal and not final")
	}
	if KindOf(FromReason("NoSuchReason", "m")) != 0 {
		t.Error("an unknown reason has no kind")
	}
}
