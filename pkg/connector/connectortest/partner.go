package connectortest

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"sync"
	"time"
)

// Partner describes the partner a connector under test talks to: any
// HTTP API. The suite serves Handler on a local port and puts its own
// fault injection in front of it (an error status, a 429 with
// Retry-After, a lost response, a slow answer, an outage), so the
// partner needs no hooks beyond Effects.
type Partner struct {
	// Handler is the partner's API: its real handler, a recording
	// (Replay), or a small in-memory fake of your own. It must be safe
	// for concurrent use.
	Handler http.Handler
	// Effects counts the changes the partner has applied so far
	// (objects created, updated, deleted; a request answered from its
	// idempotency store is not a change). The suite compares it before
	// and after redeliveries: a redelivery, or a retry after a lost
	// response, must add nothing.
	Effects func() int
	// Reject is how the partner refuses an event for good (e.g. 422
	// with its error body); the suite answers it to check that the
	// connector reports a *connector.Rejection. Default: 422 with
	// {"error": "rejected by the conformance suite"}.
	Reject Answer
	// IdempotencyHeader is the request header that carries the
	// idempotency key. Default "Idempotency-Key"; "-" when the partner
	// takes none (then only Effects shows that a redelivery is safe).
	IdempotencyHeader string
}

// Answer is one HTTP response.
type Answer struct {
	Status int
	Header map[string]string
	Body   string
}

func (a Answer) write(w http.ResponseWriter) {
	for k, v := range a.Header {
		w.Header().Set(k, v)
	}
	if a.Body != "" && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(a.Status)
	_, _ = io.WriteString(w, a.Body) // the connector hanging up is what some checks want
}

// Exchange is one recorded partner call: a request (method and a
// path.Match pattern of its path) and the partner's answer.
type Exchange struct {
	Method string
	Path   string
	Answer Answer
}

// Replay is a Partner that answers from a recording: each request gets
// the answer of the first exchange that matches its method and path, or
// 501 naming what was not recorded. A request whose idempotency key
// (Idempotency-Key) was answered before gets that first answer again
// and changes nothing, as an idempotent partner does; Effects counts
// the other 2xx answers to requests other than GET.
func Replay(exchanges ...Exchange) Partner {
	r := &replay{exchanges: exchanges, seen: map[string]Answer{}}
	return Partner{Handler: r, Effects: r.effects}
}

type replay struct {
	exchanges []Exchange
	mu        sync.Mutex
	seen      map[string]Answer
	applied   int
}

func (r *replay) effects() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

func (r *replay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	_, _ = io.Copy(io.Discard, req.Body) // the body does not choose the answer
	r.mu.Lock()
	defer r.mu.Unlock()
	key := req.Header.Get("Idempotency-Key")
	if key != "" {
		if a, ok := r.seen[req.Method+" "+req.URL.Path+" "+key]; ok {
			a.write(w)
			return
		}
	}
	for _, e := range r.exchanges {
		if ok, _ := path.Match(e.Path, req.URL.Path); ok && (e.Method == "" || e.Method == req.Method) {
			if e.Answer.Status < 300 && req.Method != http.MethodGet {
				r.applied++
			}
			if key != "" {
				r.seen[req.Method+" "+req.URL.Path+" "+key] = e.Answer
			}
			e.Answer.write(w)
			return
		}
	}
	Answer{Status: http.StatusNotImplemented, Body: `{"error": "no recorded exchange for ` + req.Method + " " + req.URL.Path + `"}`}.write(w)
}

// fault is what the suite's front does to the next requests.
type fault int

const (
	noFault     fault = iota
	answerFault       // answer a fixed Answer instead of the partner
	loseFault         // let the partner apply the request, then drop the connection
	slowFault         // hold the request longer than the connector's timeout
	outageFault       // answer 503 to everything
)

// front serves the partner behind the suite's fault injection and
// records the idempotency keys it sees.
type front struct {
	inner  http.Handler
	header string

	mu     sync.Mutex
	fault  fault
	times  int // requests the fault still applies to; 0 means every one
	answer Answer
	delay  time.Duration
	keys   []string // idempotency keys of requests other than GET, in order
}

// set makes the next times requests (0: all) suffer f.
func (f *front) set(fl fault, times int, a Answer, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault, f.times, f.answer, f.delay = fl, times, a, delay
}

func (f *front) seenKeys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keys...)
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if r.Method != http.MethodGet && f.header != "-" {
		f.keys = append(f.keys, r.Header.Get(f.header))
	}
	fl, a, delay := f.fault, f.answer, f.delay
	if fl != noFault && f.times > 0 {
		if f.times--; f.times == 0 {
			f.fault = noFault
		}
	}
	f.mu.Unlock()
	switch fl {
	case answerFault:
		a.write(w)
	case outageFault:
		Answer{Status: http.StatusServiceUnavailable, Body: `{"error": "outage (conformance suite)"}`}.write(w)
	case slowFault:
		body, _ := io.ReadAll(r.Body) // read first: the server notices a client that hangs up only then
		r.Body = io.NopCloser(bytes.NewReader(body))
		select {
		case <-time.After(delay):
			f.inner.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	case loseFault:
		body, _ := io.ReadAll(r.Body) // a short body is the partner's to judge
		r.Body = io.NopCloser(bytes.NewReader(body))
		f.inner.ServeHTTP(httptest.NewRecorder(), r) // applied, answer lost
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // HTTP/2: the server resets the stream
	default:
		f.inner.ServeHTTP(w, r)
	}
}

// unreachable returns an http URL where nothing listens.
func unreachable() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr, nil
}
