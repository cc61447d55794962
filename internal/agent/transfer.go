package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Cross-node copies (docs/FORMAT.md#cross-node-copies): an agent serves
// its snapshots and volumes over TLS to the agent of the node a Volume
// copying them is placed on. Both sides present self-signed certificates
// made at start-up and check the other's against the pin its StorageNode
// status publishes, read from the API server.

const (
	// reasonHeader carries the error kind of a refused copy (model's
	// reasons), so the fetching side fails with the same kind.
	reasonHeader = "Cairn-Reason"
	// idleTimeout bounds how long a copy's connection may carry nothing.
	idleTimeout = time.Minute
)

// transferStatus is what the StorageNode publishes.
func (a *Agent) transferStatus() *cairnv1.TransferEndpoint {
	return &cairnv1.TransferEndpoint{Address: a.TransferAddress, CertificateSHA256: a.ident.Pin}
}

// listenTransfer opens the transfer listener (SetupWithManager) so that a
// bad endpoint fails the start and port 0 gets its real address.
func (a *Agent) listenTransfer() (net.Listener, error) {
	ln, err := net.Listen("tcp", a.TransferEndpoint)
	if err != nil {
		return nil, fmt.Errorf("transfer endpoint: %w", err)
	}
	if a.TransferAddress == "" {
		a.TransferAddress = ln.Addr().String()
	}
	return ln, nil
}

// serveTransfer serves copies on ln until ctx ends.
func (a *Agent) serveTransfer(ctx context.Context, ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes/{id}/source", a.serveSource)
	mux.HandleFunc("GET /v1/snapshots/{id}/metadata", a.serveMetadata)
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{a.ident.Cert},
			// A copy checks the client's certificate against its node's
			// pin (serveSource); metadata requests authenticate by token.
			ClientAuth: tls.RequireAnyClientCert,
		},
		ReadHeaderTimeout: 10 * time.Second,
		// Idle keep-alive connections are closed; a request's headers
		// (a token at most) stay small.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       nil,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	klog.InfoS("Serving cross-node copies", "listen", ln.Addr().String(), "address", a.TransferAddress, "certificateSHA256", a.ident.Pin)
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		klog.ErrorS(err, "Cross-node copy server stopped")
	}
}

// errDenied is a request the caller is not entitled to (403).
var errDenied = errors.New("refused")

// refuse answers a request refused before its body with the status for
// err and its reason in reasonHeader, so the caller fails with the same
// kind.
func refuse(w http.ResponseWriter, log klog.Logger, msg string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errUnauthenticated):
		code = http.StatusUnauthorized
	case errors.Is(err, errDenied):
		code = http.StatusForbidden
	case errors.Is(err, model.ErrNotFound):
		code = http.StatusNotFound
	case model.KindOf(err) != 0:
		code = http.StatusConflict
	}
	log.Info(msg, "code", code, "err", err)
	w.Header().Set(reasonHeader, model.Reason(err))
	http.Error(w, err.Error(), code)
}

func (a *Agent) serveSource(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	log := klog.FromContext(r.Context()).WithValues("volumeID", id, "peer", r.RemoteAddr)
	src, err := a.authorizeCopy(r.Context(), id, kube.PeerPin(r.TLS))
	var x *engine.Export
	if err == nil {
		x, err = a.Engine.OpenSource(r.Context(), *src)
	}
	if err != nil {
		refuse(w, log, "Cross-node copy refused", err)
		return
	}
	defer x.Close()
	start := time.Now()
	w.Header().Set("Content-Type", "application/vnd.cairn.transfer.v1")
	if err := x.WriteTo(r.Context(), w); err != nil {
		log.Error(err, "Cross-node copy broken off", "source", src)
		return // the missing end record tells the receiver
	}
	log.Info("Cross-node copy sent", "source", src, "duration", time.Since(start))
}

// authorizeCopy allows a copy of the source of Volume id to the peer whose
// certificate has pin only if, as the API server says now, that Volume
// copies a snapshot or volume of this node onto the peer's node.
func (a *Agent) authorizeCopy(ctx context.Context, id, pin string) (*model.Source, error) {
	if !model.ValidVolumeID(id) {
		return nil, fmt.Errorf("%w: %q is not a volume ID", errDenied, id)
	}
	if pin == "" {
		return nil, fmt.Errorf("%w: no client certificate", errDenied)
	}
	var v cairnv1.Volume
	if err := a.reader.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, fmt.Errorf("%w: volume %s: %v", errDenied, id, err)
	}
	s := v.Spec.Source
	switch {
	case !v.DeletionTimestamp.IsZero():
		return nil, fmt.Errorf("%w: volume %s is being deleted", errDenied, id)
	case s == nil || s.NodeName != a.Node || (s.Kind != cairnv1.SourceSnapshot && s.Kind != cairnv1.SourceVolume):
		return nil, fmt.Errorf("%w: volume %s copies nothing from node %s", errDenied, id, a.Node)
	case v.Spec.NodeName == a.Node:
		return nil, fmt.Errorf("%w: volume %s is on this node", errDenied, id)
	}
	var sn cairnv1.StorageNode
	if err := a.reader.Get(ctx, client.ObjectKey{Name: v.Spec.NodeName}, &sn); err != nil {
		return nil, fmt.Errorf("%w: storage node %s: %v", errDenied, v.Spec.NodeName, err)
	}
	if t := sn.Status.Transfer; t == nil || t.CertificateSHA256 != pin {
		return nil, fmt.Errorf("%w: the client's certificate is not node %s's", errDenied, v.Spec.NodeName)
	}
	return &model.Source{Kind: model.SourceKind(s.Kind), ID: s.ID}, nil
}

// fetchFrom fetches the source of Volume volumeID from node's agent.
func (a *Agent) fetchFrom(node, volumeID string) engine.Fetch {
	return func(ctx context.Context) (io.ReadCloser, error) {
		unavailable := func(format string, args ...any) error {
			return model.Errorf(model.ErrUnavailable, "copy from node %s: %s", node, fmt.Sprintf(format, args...))
		}
		var sn cairnv1.StorageNode
		if err := a.reader.Get(ctx, client.ObjectKey{Name: node}, &sn); err != nil {
			return nil, unavailable("storage node: %v", err)
		}
		t := sn.Status.Transfer
		if t == nil || t.Address == "" {
			return nil, unavailable("its agent serves no copies (no status.transfer.address: an agent older than cross-node copies, or one without --transfer-endpoint)")
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &kube.IdleConn{Conn: c, Timeout: idleTimeout}, nil
			},
			TLSClientConfig:       kube.PinnedClientTLS(a.ident, node, t.CertificateSHA256),
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: 2 * time.Minute,
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+t.Address+"/v1/volumes/"+volumeID+"/source", nil)
		if err != nil {
			return nil, unavailable("%v", err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return nil, unavailable("%v", err)
		}
		if resp.StatusCode == http.StatusOK {
			return resp.Body, nil
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		text := fmt.Sprintf("node %s: %s", node, strings.TrimSpace(string(msg)))
		if resp.StatusCode == http.StatusForbidden {
			// A pin not yet published after a restart, for instance.
			return nil, unavailable("refused: %s", strings.TrimSpace(string(msg)))
		}
		if err := model.FromReason(resp.Header.Get(reasonHeader), text); model.KindOf(err) != 0 {
			return nil, err
		}
		return nil, unavailable("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(msg)))
	}
}
