// Package admin serves a binary's operator HTTP endpoints: Prometheus
// metrics at /metrics, liveness at /healthz, readiness at /readyz and Go
// profiles at /debug/pprof/, guarded against other sites in a browser,
// DNS rebinding and, with a token, the network (Access).
// Safe for concurrent use.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is an admin HTTP server.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr ("127.0.0.1:9464"; port 0 picks one). ready reports
// readiness and, when not ready, why. extra are more routes (wrap those
// that need the token with acc.RequireToken). acc guards every route
// (see Access); the profiles need its token.
func Listen(addr string, reg *prometheus.Registry, ready func() (bool, string), extra map[string]http.Handler,
	acc Access) (*Server, error) {
	bindHost, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("admin: admin_addr %q: %v (use host:port, e.g. 127.0.0.1:9464)", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %s (set --admin-addr to a free address): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	// Profiles for operators (the admin address is loopback by default).
	guard := acc.RequireToken
	mux.Handle("/debug/pprof/", guard(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/profile", guard(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", guard(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", guard(http.HandlerFunc(pprof.Trace)))
	for p, h := range extra {
		mux.Handle(p, h)
	}
	return &Server{srv: &http.Server{Handler: acc.guard(bindHost, mux), ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then shuts down within five seconds.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}
