package admin

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Access decides who may use an admin server. Every request must name
// the server in its Host header (so a web page cannot reach it through
// DNS rebinding) and must not come from another site in a browser
// (Sec-Fetch-Site, Origin); requests that change state must send a JSON
// body (which a page on another site cannot send without a preflight the
// server never answers); and when Token is set, the API and profiles
// need it. docs/security.md gives the threat model.
type Access struct {
	// Token, when set, is required as "Authorization: Bearer <token>" by
	// the API routes and the profiles (not by /healthz, /readyz,
	// /metrics or the sink's page, which holds no data). Read from
	// FERRY_ADMIN_TOKEN; required when the address is not loopback.
	Token string
	// TokenName names the token's holder in the record of each act
	// made with it (ferry.operator_action.actor). Read from
	// FERRY_ADMIN_TOKEN_NAME; "" = "admin-token".
	TokenName string
	// AllowedHosts are the host names (no port) requests may address
	// the server by, besides IP literals, "localhost" and the host of
	// the bind address: the names a proxy or a DNS entry gives it
	// (admin_allowed_hosts). A name not listed is refused.
	AllowedHosts []string
}

// RequireToken wraps h so it needs the token, when one is set.
func (a Access) RequireToken(h http.Handler) http.Handler {
	if a.Token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.Token)) != 1 {
			refuse(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <token> (the admin token, FERRY_ADMIN_TOKEN)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Actor names who makes a request that passed RequireToken, for the
// record of operator acts: "token:<TokenName>", or, with no token set,
// "admin-api (no token) from <remote address>".
func (a Access) Actor(r *http.Request) string {
	if a.Token == "" {
		return "admin-api (no token) from " + r.RemoteAddr
	}
	name := a.TokenName
	if name == "" {
		name = "admin-token"
	}
	return "token:" + name
}

// guard wraps the whole server: the Host, browser-origin and content
// type checks. bindHost is the host of the listen address.
func (a Access) guard(bindHost string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probe := r.URL.Path == "/healthz" || r.URL.Path == "/readyz"
		if !probe && !a.hostAllowed(bindHost, r.Host) {
			refuse(w, http.StatusForbidden, fmt.Sprintf("host %q is not a name of this admin server: use its address, "+
				"or add the name to admin_allowed_hosts (FERRY_ADMIN_ALLOWED_HOSTS)", r.Host))
			return
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
			refuse(w, http.StatusForbidden, "cross-site request refused: the admin API only serves its own page and non-browser clients")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			refuse(w, http.StatusForbidden, "cross-origin request refused: the Origin is not this admin server")
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if !strings.HasPrefix(r.URL.Path, "/debug/pprof/") && (err != nil || mt != "application/json") {
				refuse(w, http.StatusUnsupportedMediaType, "send the request body as JSON with Content-Type: application/json")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// hostAllowed reports whether a Host header names this server. IP
// literals are fine: DNS rebinding needs a name.
func (a Access) hostAllowed(bindHost, host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), ".")
	if h == "" {
		return false
	}
	if net.ParseIP(h) != nil || strings.EqualFold(h, "localhost") || strings.EqualFold(h, bindHost) {
		return true
	}
	for _, n := range a.AllowedHosts {
		if strings.EqualFold(h, strings.TrimSuffix(n, ".")) {
			return true
		}
	}
	return false
}

// sameOrigin reports whether an Origin header is this server's own
// (scheme aside: a TLS proxy may sit in front).
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false // includes "null": sandboxed frames, file: pages
	}
	return strings.EqualFold(u.Host, host)
}

func refuse(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg}) // a client hanging up is its own problem
}

// CheckExposure refuses an admin address that is not loopback without a
// token: the sink's API can skip events and roll tenants back, and both
// binaries' profiles and per-tenant state would be open to the network.
func CheckExposure(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin_addr %q: %v (use host:port, e.g. 127.0.0.1:9465)", addr, err)
	}
	if token != "" {
		return nil
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("admin_addr %q is not a loopback address: set an admin token (FERRY_ADMIN_TOKEN) so the admin API is not open to the network, or bind 127.0.0.1", addr)
}

// CheckAllowedHosts validates admin_allowed_hosts entries: host names
// without a port or scheme.
func CheckAllowedHosts(hosts []string) error {
	for i, h := range hosts {
		if h == "" || strings.ContainsAny(h, "/:@ ") {
			return fmt.Errorf("admin_allowed_hosts[%d]: %q: give a host name without scheme or port (e.g. ferry-sink.internal)", i, h)
		}
	}
	return nil
}
