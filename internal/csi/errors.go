package csi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/engine"
)

// toStatus maps an error to its gRPC status. It is the one place where
// engine error kinds become codes; anything unknown is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, engine.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, engine.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, engine.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, engine.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, engine.ErrFailedPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, engine.ErrResourceExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, engine.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, engine.ErrAborted):
		code = codes.Aborted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
