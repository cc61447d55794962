package csi

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// slowCall is the duration above which a call is logged at level 0.
const slowCall = 10 * time.Second

var requestSeq atomic.Uint64

type requestIDKey struct{}

// RequestID returns the ID the interceptor chain gave this call.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

func requestIDInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id := fmt.Sprintf("req-%d", requestSeq.Add(1))
	ctx = context.WithValue(ctx, requestIDKey{}, id)
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithValues("requestID", id))
	return handler(ctx, req)
}

// loggingInterceptor logs every call with secrets stripped.
func loggingInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	logger := klog.FromContext(ctx)
	logger.V(3).Info("GRPC call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	start := time.Now()
	resp, err := handler(ctx, req)
	d := time.Since(start)
	switch {
	case err != nil:
		logger.Error(err, "GRPC error", "method", info.FullMethod, "duration", d)
	case d > slowCall:
		logger.Info("Slow GRPC call", "method", info.FullMethod, "duration", d)
	default:
		logger.V(3).Info("GRPC response", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp), "duration", d)
	}
	return resp, err
}

var (
	rpcTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_csi_operations_total",
		Help: "CSI calls by method and gRPC code.",
	}, []string{"method", "code"})
	rpcSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cairn_csi_operation_duration_seconds",
		Help:    "Duration of CSI calls by method.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
	}, []string{"method"})
)

// RegisterMetrics registers the CSI metrics with reg.
func RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(rpcTotal, rpcSeconds)
}

func metricsInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	rpcSeconds.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	rpcTotal.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

// recoverInterceptor turns a panic into Internal instead of killing the
// process in the middle of other calls.
func recoverInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.FromContext(ctx).Error(nil, "Panic in GRPC handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "internal error in %s: %v", info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

// streamInterceptor gives a streaming call (the SnapshotMetadata service)
// what the unary chain gives the others: a request ID in its logger, a log
// line, the metrics and a recovered panic.
func streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	id := fmt.Sprintf("req-%d", requestSeq.Add(1))
	ctx := context.WithValue(ss.Context(), requestIDKey{}, id)
	logger := klog.FromContext(ctx).WithValues("requestID", id)
	ctx = klog.NewContext(ctx, logger)
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			logger.Error(nil, "Panic in GRPC handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "internal error in %s: %v", info.FullMethod, r)
		}
		d := time.Since(start)
		rpcSeconds.WithLabelValues(info.FullMethod).Observe(d.Seconds())
		rpcTotal.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		if err != nil {
			logger.Error(err, "GRPC error", "method", info.FullMethod, "duration", d)
		} else {
			logger.V(3).Info("GRPC stream done", "method", info.FullMethod, "duration", d)
		}
	}()
	return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

// ctxStream is a server stream with the interceptor's context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }
