// Package model holds what Cairn's controller and node sides share and
// nothing that touches a disk: the error kinds and their one table (gRPC
// code, status reason, finality), IDs and their derivation, the size
// rules, content sources, bs:// backup handles, and the request and
// result types that cross the boundary between the CSI layer and a
// backend. It imports no other Cairn package, so every layer may import
// it.
package model

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
)

// Kind is the kind of a failure. Kinds are errors themselves, so callers
// test them with errors.Is(err, model.ErrNotFound).
type Kind int

// The kinds. Their order is the table's; the zero Kind is none.
const (
	ErrNotFound Kind = iota + 1
	ErrAlreadyExists
	ErrInvalidArgument
	ErrOutOfRange
	ErrFailedPrecondition
	ErrResourceExhausted
	ErrUnavailable
	ErrAborted
)

// kindInfo is one row of the table.
type kindInfo struct {
	text   string     // the kind's own error text
	code   codes.Code // the gRPC code a CSI call answers
	reason string     // the Kubernetes status reason a node reports
	final  bool       // the same request can never succeed
}

// kinds is the one table of error kinds: every mapping of a kind to a
// code, a reason or a retry decision reads it.
var kinds = map[Kind]kindInfo{
	ErrNotFound:           {"not found", codes.NotFound, "NotFound", true},
	ErrAlreadyExists:      {"already exists", codes.AlreadyExists, "AlreadyExists", true},
	ErrInvalidArgument:    {"invalid argument", codes.InvalidArgument, "InvalidArgument", true},
	ErrOutOfRange:         {"out of range", codes.OutOfRange, "OutOfRange", true},
	ErrFailedPrecondition: {"failed precondition", codes.FailedPrecondition, "FailedPrecondition", false},
	ErrResourceExhausted:  {"resource exhausted", codes.ResourceExhausted, "ResourceExhausted", true},
	ErrUnavailable:        {"unavailable", codes.Unavailable, "Unavailable", false},
	ErrAborted:            {"aborted", codes.Aborted, "InProgress", false},
}

// ReasonInternal is the status reason of a failure without a kind.
const ReasonInternal = "Internal"

func (k Kind) Error() string {
	if info, ok := kinds[k]; ok {
		return info.text
	}
	return fmt.Sprintf("kind %d", int(k))
}

// Error is a failure of a kind. Its text is the message alone; the cause,
// if the message wrapped one with %w, stays reachable through Unwrap.
type Error struct {
	Kind  Kind
	msg   string
	cause error
}

func (e *Error) Error() string { return e.msg }

// Is makes errors.Is(err, kind) true for the error's own kind.
func (e *Error) Is(target error) bool { k, ok := target.(Kind); return ok && k == e.Kind }

// Unwrap returns what the message wrapped (nil if nothing).
func (e *Error) Unwrap() error { return e.cause }

// As makes errors.As(err, &kind) find the error's own kind.
func (e *Error) As(target any) bool {
	k, ok := target.(*Kind)
	if ok {
		*k = e.Kind
	}
	return ok
}

// Errorf returns an error of kind whose text is the formatted message; %w
// in format keeps the cause inspectable with errors.Is and errors.As.
func Errorf(kind Kind, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	e := &Error{Kind: kind, msg: err.Error()}
	switch err.(type) {
	case interface{ Unwrap() error }, interface{ Unwrap() []error }:
		e.cause = err // format had %w
	}
	return e
}

// KindOf returns the kind of err: the outermost one along its chain, 0 if
// none.
func KindOf(err error) Kind {
	var k Kind
	errors.As(err, &k)
	return k
}

// Code is the gRPC code a CSI call answers err with: its kind's, the
// context's for a cancelled or timed-out call, Internal otherwise.
func Code(err error) codes.Code {
	if info, ok := kinds[KindOf(err)]; ok {
		return info.code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
}

// Reason is the status reason a node reports for err ("Internal" when it
// has no kind).
func Reason(err error) string {
	if info, ok := kinds[KindOf(err)]; ok {
		return info.reason
	}
	return ReasonInternal
}

// Final reports whether a retry of the request that failed with err can
// never succeed.
func Final(err error) bool { return kinds[KindOf(err)].final }

// FromReason turns a reported status reason and message back into an
// error of the reason's kind (of no kind for an unknown reason), so a
// controller answers with the code the node would have.
func FromReason(reason, msg string) error {
	for k, info := range kinds {
		if info.reason == reason {
			return &Error{Kind: k, msg: msg}
		}
	}
	return errors.New(msg)
}
