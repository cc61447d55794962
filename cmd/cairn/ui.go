package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/kube"
	"github.com/cairn-csi/cairn/internal/ui"
)

// userFlags are kubectl's flags for whose cluster and identity to use.
type userFlags struct {
	kubeconfig, context, namespace string
}

func (u *userFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&u.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&u.context, "context", "", "kubeconfig context (default: the current context)")
}

// clientConfig loads the user's kubeconfig as kubectl does.
func (u *userFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = u.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: u.context})
}

func (u *userFlags) restConfig() (*rest.Config, error) {
	cfg, err := u.clientConfig().ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "cairn-ui/" + csi.Version
	return cfg, nil
}

func (u *userFlags) client() (client.Client, error) {
	cfg, err := u.restConfig()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: kube.Scheme})
}

// runUI serves the web UI with the user's identity on a loopback address.
func runUI(args []string) error {
	fs := flag.NewFlagSet("ui", flag.ContinueOnError)
	var uf userFlags
	uf.register(fs)
	listen := fs.String("listen", "127.0.0.1:8080", "where to serve the UI: a loopback address, unless --in-cluster (local mode has no login: it acts with your kubeconfig's identity)")
	inCluster := fs.Bool("in-cluster", false, "serve in a pod for many users: each request must carry the user's bearer token (Authorization header, X-Forwarded-Access-Token, or signed in on /login), and every API call is made with it; the pod's own credentials only discover the API's kinds")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var id ui.Identity
	if *inCluster {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return fmt.Errorf("--in-cluster: %w", err)
		}
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			return err
		}
		mapper, err := apiutil.NewDynamicRESTMapper(cfg, hc)
		if err != nil {
			return err
		}
		id = &ui.BearerTokens{Base: rest.AnonymousClientConfig(cfg), Mapper: mapper}
	} else {
		if err := checkLoopback(*listen); err != nil {
			return err
		}
		c, err := uf.client()
		if err != nil {
			return err
		}
		id = ui.Fixed{Client: c}
	}
	srv, err := ui.New(id, csi.DriverName)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if !*inCluster {
		// Only this listener's loopback names are served: a page of
		// another site whose name was pointed at 127.0.0.1 (DNS
		// rebinding) gets nothing.
		a := ln.Addr().(*net.TCPAddr)
		if !a.IP.IsLoopback() {
			ln.Close()
			return fmt.Errorf("--listen %q: listening on %s, not a loopback address", *listen, a)
		}
		port := fmt.Sprint(a.Port)
		srv.Hosts = []string{net.JoinHostPort(a.IP.String(), port), "localhost:" + port}
	}
	fmt.Fprintf(os.Stderr, "Cairn UI on http://%s/ (Ctrl-C stops it)\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// checkLoopback refuses a listen address that other machines reach.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--listen %q: not a loopback address; the local UI has no login and acts with your identity, so it serves only this machine", addr)
}
