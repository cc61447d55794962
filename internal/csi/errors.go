package csi

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// toStatus maps an error to its gRPC status: an error of a model.Kind gets
// its kind's code (model.Code, the one table), even if it wraps a status;
// a status passes as it is; anything else is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && model.KindOf(err) == 0 {
		return err
	}
	return status.Error(model.Code(err), err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
