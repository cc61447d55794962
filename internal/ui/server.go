// Package ui is `cairn ui`: a web UI over standard Kubernetes objects
// (PVCs, PVs, VolumeSnapshots and their classes, Cairn's Volumes,
// Snapshots, StorageNodes, BackupTargets, StandbyVolumes, events). Pages
// are rendered on the server (html/template, embedded assets, a little
// JavaScript for live refresh and confirmations); every read and every
// action is an API call made with the caller's own identity, so RBAC
// decides what each person sees and may do. Actions create and patch the
// objects a user would: a VolumeSnapshot, a PVC with a dataSource, a PVC
// size patch, deletes. No storage code.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Server serves the UI; every API call is made with the identity the
// request's user has (Identity).
type Server struct {
	Identity Identity
	Driver   string
	// Hosts, if set, are the only Host header values served (local
	// mode: the listener's loopback names).
	Hosts []string
	// Now is the clock (time.Now if nil).
	Now func() time.Time

	tmpl *template.Template
}

const csrfCookie = "cairn_csrf"

// New prepares a Server that acts as id's users.
func New(id Identity, driver string) (*Server, error) {
	s := &Server{Identity: id, Driver: driver}
	t, err := template.New("").Funcs(funcs(s.now)).ParseFS(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	s.tmpl = t
	return s, nil
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Handler is the UI's routes (docs in README, "Web UI").
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.page("dashboard", nil))
	mux.HandleFunc("GET /volumes", s.page("volumes", nil))
	mux.HandleFunc("GET /volumes/{ns}/{name}", s.page("volume", nil))
	mux.HandleFunc("GET /volumes/{ns}/{name}/snapshots", s.page("snapshots", nil))
	mux.HandleFunc("GET /backups", s.page("backups", nil))
	mux.HandleFunc("GET /backups/table", s.page("backups-table", nil))
	mux.HandleFunc("GET /nodes", s.page("nodes", nil))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /login", s.login)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.logout)
	mux.HandleFunc("POST /volumes/{ns}/{name}/snapshot", s.action(s.snapshot))
	mux.HandleFunc("POST /volumes/{ns}/{name}/expand", s.action(s.expand))
	mux.HandleFunc("POST /volumes/{ns}/{name}/restore", s.action(s.restore))
	mux.HandleFunc("POST /volumes/{ns}/{name}/clone", s.action(s.clone))
	mux.HandleFunc("POST /volumes/{ns}/{name}/delete", s.action(s.deletePVC))
	mux.HandleFunc("POST /snapshots/{ns}/{name}/delete", s.action(s.deleteSnapshot))
	mux.HandleFunc("POST /backups/{name}/verify", s.action(s.verify))
	return s.guard(mux)
}

// volumePage is a volume page's path: /volumes/<namespace>/<name>.
var volumePage = regexp.MustCompile(`^/volumes/[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9.-]{0,252}$`)

// maxBody bounds every request's body.
const maxBody = 64 << 10

// guard: requests' bodies are bounded; in local mode only the loopback
// names of this listener are served (a page from another site whose name
// was re-pointed at 127.0.0.1 — DNS rebinding — is refused); no framing,
// no sniffing, scripts and styles only from this origin.
func (s *Server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.Hosts) > 0 && !slices.Contains(s.Hosts, strings.ToLower(r.Host)) {
			http.Error(w, fmt.Sprintf("host %q refused: this UI answers only to %s", r.Host, strings.Join(s.Hosts, ", ")), http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
		h.ServeHTTP(w, r)
	})
}

// view is what a template gets.
type view struct {
	Page, Title string
	State       *State
	Volume      *Volume
	Query       url.Values
	CSRF        string
	Notice      string
	Error       string
	Logout      bool // the user signed in with a token (in-cluster mode)
}

// page renders a template over a fresh read of the cluster.
func (s *Server) page(name string, _ any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := s.setCSRF(w, r)
		c, err := s.Identity.ClientFor(r)
		if errors.Is(err, ErrNoToken) {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		st, err := Read(r.Context(), c, s.Driver)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		v := &view{Page: name, State: st, Query: r.URL.Query(), CSRF: tok, Notice: r.URL.Query().Get("notice"), Error: r.URL.Query().Get("error"),
			Logout: s.Identity.Login()}
		switch name {
		case "dashboard":
			v.Title = "Dashboard"
		case "volumes":
			v.Title = "Volumes"
			st.Volumes = filterSort(st.Volumes, r.URL.Query())
		case "volume", "snapshots":
			v.Volume = st.volume(r.PathValue("ns"), r.PathValue("name"))
			if v.Volume == nil {
				http.Error(w, fmt.Sprintf("no Cairn PVC %s/%s (or you may not read it)", r.PathValue("ns"), r.PathValue("name")), http.StatusNotFound)
				return
			}
			v.Title = v.Volume.Namespace + "/" + v.Volume.Name
		case "backups", "backups-table":
			v.Title = "Backups"
		case "nodes":
			v.Title = "Nodes"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := s.tmpl.ExecuteTemplate(w, name+".html", v); err != nil {
			klog.ErrorS(err, "Rendering", "page", name)
		}
	}
}

// setCSRF gives this browser its own random double-submit token (a
// cookie, and the value forms embed), keeping one it already has.
func (s *Server) setCSRF(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && validCSRF(c.Value) {
		return c.Value
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"})
	return tok
}

func validCSRF(v string) bool {
	b, err := hex.DecodeString(v)
	return err == nil && len(b) == 32
}

// checkCSRF: the form's token equals the browser's cookie (which another
// site can neither read nor set), and a browser's Origin, if sent, is
// this host.
func (s *Server) checkCSRF(r *http.Request) error {
	c, err := r.Cookie(csrfCookie)
	form := r.PostFormValue("csrf")
	if err != nil || !validCSRF(c.Value) || subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) != 1 {
		return errors.New("the form's CSRF token is missing or wrong: reload the page and try again")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return fmt.Errorf("request from origin %q refused", o)
		}
	}
	return nil
}

// actionFunc carries out an action and says what it did.
type actionFunc func(ctx context.Context, c client.Client, r *http.Request) (string, error)

// action wraps an action: CSRF first; then the result goes back as JSON
// to the page's script (X-Cairn-Fetch), or as a redirect to the volume
// page with a notice or the API's error.
func (s *Server) action(fn actionFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkCSRF(r); err != nil {
			s.reply(w, r, "", http.StatusForbidden, err)
			return
		}
		c, err := s.Identity.ClientFor(r)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrNoToken) {
				code = http.StatusUnauthorized
			}
			s.reply(w, r, "", code, err)
			return
		}
		msg, err := fn(r.Context(), c, r)
		code := http.StatusOK
		if err != nil {
			code = statusOf(err)
			klog.InfoS("UI action refused", "path", r.URL.Path, "err", err)
		} else {
			klog.InfoS("UI action", "path", r.URL.Path, "result", msg)
		}
		s.reply(w, r, msg, code, err)
	}
}

func (s *Server) reply(w http.ResponseWriter, r *http.Request, msg string, code int, err error) {
	if r.Header.Get("X-Cairn-Fetch") == "1" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		out := map[string]string{"message": msg}
		if err != nil {
			out = map[string]string{"error": err.Error()}
		}
		_ = json.NewEncoder(w).Encode(out)
		return
	}
	back := "/volumes/" + url.PathEscape(r.PathValue("ns")) + "/" + url.PathEscape(r.PathValue("name"))
	switch {
	case strings.HasPrefix(r.URL.Path, "/backups/"):
		back = "/backups"
	case strings.HasPrefix(r.URL.Path, "/snapshots/") || strings.HasSuffix(r.URL.Path, "/delete"):
		back = "/volumes"
		// Only a volume page of valid names, or the backups page: never a
		// path that a browser could read as another site's (/\evil, //evil).
		if v := r.PostFormValue("back"); code != http.StatusForbidden && (volumePage.MatchString(v) || v == "/backups") {
			back = v
		}
	}
	q := url.Values{}
	if err != nil {
		q.Set("error", err.Error())
	} else {
		q.Set("notice", msg)
	}
	http.Redirect(w, r, back+"?"+q.Encode(), http.StatusSeeOther)
}

// statusOf maps an API error to the HTTP status shown.
func statusOf(err error) int {
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Code != 0 {
		return int(se.Status().Code)
	}
	var ie inputError
	if errors.As(err, &ie) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func (s *Server) fail(w http.ResponseWriter, _ *http.Request, err error) {
	http.Error(w, err.Error(), statusOf(err))
}
