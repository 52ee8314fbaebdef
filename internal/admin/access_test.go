package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAccessGuard(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })
	acc := Access{Token: "t0k", AllowedHosts: []string{"ferry.internal"}}
	h := acc.guard("127.0.0.1", acc.RequireToken(ok))
	for _, c := range []struct {
		name, method, path, host string
		hdr                      map[string]string
		want                     int
	}{
		{"ip literal", "GET", "/api", "127.0.0.1:9465", nil, 401},
		{"ip literal with token", "GET", "/api", "127.0.0.1:9465", map[string]string{"Authorization": "Bearer t0k"}, 200},
		{"localhost", "GET", "/api", "localhost:9465", map[string]string{"Authorization": "Bearer t0k"}, 200},
		{"ipv6", "GET", "/api", "[::1]:9465", map[string]string{"Authorization": "Bearer t0k"}, 200},
		{"allowed name", "GET", "/api", "Ferry.Internal.:9465", map[string]string{"Authorization": "Bearer t0k"}, 200},
		{"foreign name", "GET", "/api", "evil.example:9465", map[string]string{"Authorization": "Bearer t0k"}, 403},
		{"empty host", "GET", "/api", "", map[string]string{"Authorization": "Bearer t0k"}, 403},
		{"probe by any name", "GET", "/healthz", "lb.example", nil, 401}, // reaches the handler (the token wrapper here)
		{"cross-site", "GET", "/api", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k", "Sec-Fetch-Site": "cross-site"}, 403},
		{"same-origin", "GET", "/api", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k", "Sec-Fetch-Site": "same-origin"}, 200},
		{"user typed the URL", "GET", "/api", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k", "Sec-Fetch-Site": "none"}, 200},
		{"own origin", "POST", "/api", "127.0.0.1:9", map[string]string{"Authorization": "Bearer t0k", "Origin": "http://127.0.0.1:9", "Content-Type": "application/json; charset=utf-8"}, 200},
		{"other port origin", "POST", "/api", "127.0.0.1:9", map[string]string{"Authorization": "Bearer t0k", "Origin": "http://127.0.0.1:8", "Content-Type": "application/json"}, 403},
		{"text/plain", "POST", "/api", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k", "Content-Type": "text/plain"}, 415},
		{"multipart", "POST", "/api", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k", "Content-Type": "multipart/form-data; boundary=x"}, 415},
		{"pprof symbol POST", "POST", "/debug/pprof/symbol", "127.0.0.1", map[string]string{"Authorization": "Bearer t0k"}, 200},
	} {
		r := httptest.NewRequest(c.method, c.path, strings.NewReader("{}"))
		r.Host = c.host
		for k, v := range c.hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %d %s; want %d", c.name, w.Code, w.Body.String(), c.want)
		}
	}
}

func TestCheckExposure(t *testing.T) {
	for _, c := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:9465", "", true}, {"localhost:9465", "", true}, {"[::1]:9465", "", true},
		{"0.0.0.0:9465", "", false}, {":9465", "", false}, {"10.0.0.1:9465", "", false},
		{"0.0.0.0:9465", "x", true}, {"nocolon", "x", false},
	} {
		if err := CheckExposure(c.addr, c.token); (err == nil) != c.ok {
			t.Errorf("CheckExposure(%q, %q) = %v", c.addr, c.token, err)
		}
	}
	if CheckAllowedHosts([]string{"ferry.internal"}) != nil || CheckAllowedHosts([]string{"http://x"}) == nil || CheckAllowedHosts([]string{"x:80"}) == nil {
		t.Error("CheckAllowedHosts")
	}
}
