package ui

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/kube"
)

// Identity gives the client that acts for a request's user.
type Identity interface {
	ClientFor(r *http.Request) (client.Client, error)
	// Login tells whether users sign in (and may sign out).
	Login() bool
}

// ErrNoToken: the request carries no bearer token (in-cluster mode).
var ErrNoToken = errors.New("sign in with a Kubernetes bearer token")

// Fixed is local mode: one identity, the user's kubeconfig.
type Fixed struct{ Client client.Client }

// ClientFor returns the one client.
func (f Fixed) ClientFor(*http.Request) (client.Client, error) { return f.Client, nil }

// Login: local mode has no sign-in.
func (Fixed) Login() bool { return false }

// tokenCookie holds the token a user pasted on /login.
const tokenCookie = "cairn_token"

// maxClients bounds the clients kept for recent tokens.
const maxClients = 256

// BearerTokens is in-cluster mode: each request's own token — the
// Authorization header (an authenticating proxy's), the
// X-Forwarded-Access-Token header (oauth2-proxy), or the cookie /login
// sets — makes every API call. The pod's own credentials are never used
// for a user's call: Base holds only the API server's address and CA, and
// Mapper (built once) only maps kinds to resources.
type BearerTokens struct {
	Base   *rest.Config
	Mapper meta.RESTMapper

	mu      sync.Mutex
	clients map[[32]byte]client.Client
}

// Token finds a request's bearer token ("" if none).
func Token(r *http.Request) string {
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		return strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
	}
	if h := r.Header.Get("X-Forwarded-Access-Token"); h != "" {
		return strings.TrimSpace(h)
	}
	if c, err := r.Cookie(tokenCookie); err == nil {
		return c.Value
	}
	return ""
}

// ClientFor builds (or reuses) a client that authenticates with the
// request's token only.
func (b *BearerTokens) ClientFor(r *http.Request) (client.Client, error) {
	tok := Token(r)
	if tok == "" || len(tok) > 16<<10 || strings.ContainsAny(tok, " \t\r\n") {
		return nil, ErrNoToken
	}
	key := sha256.Sum256([]byte(tok))
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.clients[key]; c != nil {
		return c, nil
	}
	cfg := rest.AnonymousClientConfig(b.Base)
	cfg.BearerToken = tok
	c, err := client.New(cfg, client.Options{Scheme: kube.Scheme, Mapper: b.Mapper})
	if err != nil {
		return nil, fmt.Errorf("client for the request's token: %w", err)
	}
	if b.clients == nil || len(b.clients) >= maxClients {
		b.clients = map[[32]byte]client.Client{}
	}
	b.clients[key] = c
	return c, nil
}

// Login: users sign in with a token.
func (*BearerTokens) Login() bool { return true }

// login shows the sign-in form (GET) and keeps the pasted token in an
// HttpOnly cookie (POST, CSRF-checked).
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	csrf := s.setCSRF(w, r)
	if r.Method == http.MethodPost {
		if err := s.checkCSRF(r); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		tok := strings.TrimSpace(r.PostFormValue("token"))
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			http.Error(w, "token: paste one bearer token (kubectl create token NAME, or your OIDC ID token)", http.StatusBadRequest)
			return
		}
		secure := r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
		http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: tok, Path: "/", HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = s.tmpl.ExecuteTemplate(w, "login.html", &view{Page: "login", Title: "Sign in", CSRF: csrf, State: &State{}})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if err := s.checkCSRF(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
