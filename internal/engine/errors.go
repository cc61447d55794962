package engine

import (
	"errors"
	"fmt"
)

// Kinds of engine errors. Callers test them with errors.Is; the CSI layer
// maps each to one gRPC code in one place.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrOutOfRange         = errors.New("out of range")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrUnavailable        = errors.New("unavailable")
	ErrAborted            = errors.New("aborted")
)

// kindError attaches a kind to a message while keeping the message as the
// error's text.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Errorf returns an error of the given kind (ErrNotFound, ...) whose text is
// the formatted message alone; other packages use it to report in the
// engine's terms.
func Errorf(kind error, format string, args ...any) error { return errorf(kind, format, args...) }
