package ops

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/ferry-cdc/ferry/internal/delivery"
)

//go:embed page.html
var page []byte

// Routes returns the admin API and the web page, to mount on the sink's
// admin server (admin.Listen with the same acc, which refuses other
// sites, foreign Host names and non-JSON bodies). When acc has a token
// every API route needs it, as "Authorization: Bearer <token>" (the page
// holds no data; it takes the token from its URL fragment,
// /#token=..., for its API calls).
//
//	GET  /                           the read-only web page
//	GET  /api/v1/status              []IntegrationStatus
//	GET  /api/v1/failures            ?integration=&tenant=&state=a,b&since=1h&limit=100&cursor=&history=1
//	                                 (newest problem first; a further page's cursor in the
//	                                 Next-Cursor header and a Link rel="next")
//	GET  /api/v1/tenants             ?integration= &limit= &after= (header Next-Cursor)
//	POST /api/v1/retry               {"integration", "event" | "tenant", "states", "since", "all": true; "reason"}
//	                                 → {"retrying": n, "events": [{"event_id", "tenant_id", "from"}], "order"}
//	POST /api/v1/skip                {"integration", "event", "reason"}
//	POST /api/v1/pause               {"integration", "tenant", "reason"}
//	POST /api/v1/resume              {"integration", "tenant", "reason"}
//	POST /api/v1/prune               {"older_than": "720h"} → {"deliveries": n, "attempts": n}
//	POST /api/v1/tenants/enable      {"integration", "tenant", "reason"}
//	POST /api/v1/tenants/disable     {"integration", "tenant", "reason", "no_rollback"}
//
// Every state-changing call is recorded in ferry.operator_action with
// its time, reason and actor: the admin token's name
// (FERRY_ADMIN_TOKEN_NAME), or "admin-api (no token)" when none is set.
//
// Errors are {"error": "..."} with 400 (bad argument), 409 (the state does
// not allow it), 401 (token), 403 (another site, or a foreign Host), 415
// (not JSON) or 500.
func (s *Service) Routes(acc admin.Access) map[string]http.Handler {
	// Every act is recorded under the token's name (admin.Access.Actor).
	guard := func(h http.HandlerFunc) http.Handler {
		return acc.RequireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h(w, r.WithContext(delivery.WithActor(r.Context(), acc.Actor(r))))
		}))
	}
	routes := map[string]http.Handler{
		"GET /{$}": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			// The page itself holds no data; its API calls carry the token.
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
			_, _ = w.Write(page)
		}),
		"GET /api/v1/status": guard(func(w http.ResponseWriter, r *http.Request) {
			st, err := s.Status(r.Context())
			reply(w, st, err)
		}),
		"GET /api/v1/failures": guard(func(w http.ResponseWriter, r *http.Request) {
			f, err := filter(r)
			if err != nil {
				reply(w, nil, err)
				return
			}
			rows, next, err := s.Failures(r.Context(), f)
			if next != "" {
				// The body stays the array it always was; the next page's
				// cursor goes in headers (RFC 8288 Link, as GitHub's API).
				q := r.URL.Query()
				q.Set("cursor", next)
				w.Header().Set("Next-Cursor", next)
				w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
			}
			reply(w, rows, err)
		}),
		"GET /api/v1/tenants": guard(func(w http.ResponseWriter, r *http.Request) {
			// A page (?limit=, default 1000; ?after= the previous page's
			// Next-Cursor header), not every tenant.
			q := r.URL.Query()
			limit, err := atoiOr0(q.Get("limit"))
			if err != nil {
				reply(w, nil, bad("limit: %q is not a number", q.Get("limit")))
				return
			}
			ts, next, err := s.TenantsPage(r.Context(), q.Get("integration"), q.Get("after"), limit)
			if next != "" {
				w.Header().Set("Next-Cursor", next)
			}
			reply(w, ts, err)
		}),
		"POST /api/v1/retry": guard(func(w http.ResponseWriter, r *http.Request) {
			var req RetryRequest
			if !decode(w, r, &req) {
				return
			}
			res, err := s.Retry(r.Context(), req)
			reply(w, res, err)
		}),
		"POST /api/v1/skip": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct{ Integration, Event, Reason string }
			if !decode(w, r, &req) {
				return
			}
			reply(w, map[string]string{"skipped": req.Event}, s.Skip(r.Context(), req.Integration, req.Event, req.Reason))
		}),
		"POST /api/v1/pause": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct{ Integration, Tenant, Reason string }
			if !decode(w, r, &req) {
				return
			}
			reply(w, map[string]string{"paused": Target(req.Integration, req.Tenant)}, s.Pause(r.Context(), req.Integration, req.Tenant, req.Reason))
		}),
		"POST /api/v1/resume": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct{ Integration, Tenant, Reason string }
			if !decode(w, r, &req) {
				return
			}
			reply(w, map[string]string{"resumed": Target(req.Integration, req.Tenant)}, s.Resume(r.Context(), req.Integration, req.Tenant, req.Reason))
		}),
		"POST /api/v1/prune": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				OlderThan string `json:"older_than"`
			}
			if !decode(w, r, &req) {
				return
			}
			d, err := time.ParseDuration(req.OlderThan)
			if err != nil {
				reply(w, nil, bad("older_than=%q: give a duration such as 720h", req.OlderThan))
				return
			}
			res, err := s.Prune(r.Context(), d)
			reply(w, res, err)
		}),
		"POST /api/v1/tenants/enable": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct{ Integration, Tenant, Reason string }
			if !decode(w, r, &req) {
				return
			}
			res, err := s.Enable(r.Context(), req.Integration, req.Tenant, req.Reason, 0)
			reply(w, res, err)
		}),
		"POST /api/v1/tenants/disable": guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				Integration, Tenant, Reason string
				NoRollback                  bool `json:"no_rollback"`
			}
			if !decode(w, r, &req) {
				return
			}
			// The rollback outlives a client that hangs up.
			ctx := context.WithoutCancel(r.Context())
			res, err := s.Disable(ctx, req.Integration, req.Tenant, req.Reason, !req.NoRollback)
			reply(w, res, err)
		}),
	}
	return routes
}

// Target names an integration or one tenant of it.
func Target(integration, tenant string) string {
	if tenant == "" {
		return integration + " (all tenants)"
	}
	return integration + " tenant " + tenant
}

func filter(r *http.Request) (delivery.Filter, error) {
	q := r.URL.Query()
	f := delivery.Filter{Integration: q.Get("integration"), TenantID: q.Get("tenant"), Limit: 100, Cursor: q.Get("cursor"),
		History: q.Get("history") == "1" || q.Get("history") == "true"}
	if v := q.Get("state"); v != "" {
		for _, st := range strings.Split(v, ",") {
			f.States = append(f.States, delivery.State(strings.TrimSpace(st)))
		}
	}
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return f, bad("since=%q: give a duration such as 1h or 15m", v)
		}
		f.Since = time.Now().Add(-d)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return f, bad("limit=%q: give a number", v)
		}
		f.Limit = n
	}
	return f, nil
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, "request body: "+err.Error()+" (send a JSON object; see docs/operations.md)")
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		var ie *InputError
		if errors.As(err, &ie) {
			writeErr(w, ie.Status, ie.Msg)
			return
		}
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v) // a client hanging up is its own problem
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
