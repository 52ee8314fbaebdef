// Package fakecrm is an in-memory fake of the CRM's contacts API (see
// package crm) for tests: it applies a call with an Idempotency-Key it
// has seen once and answers the first answer again, refuses an email
// without "@" with 422, and counts what it applied. A CRM is safe for
// concurrent use.
package fakecrm

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Contact is one contact at the CRM.
type Contact struct {
	ID     string `json:"id"`
	Tenant string `json:"-"`
	Email  string `json:"email"`
	Name   string `json:"name"`
}

// CRM is the fake.
type CRM struct {
	// Key is the API key calls must carry as a bearer token.
	Key string

	mu       sync.Mutex
	next     int
	contacts map[string]*Contact
	answers  map[string]answer // method path key → first answer
	applied  int
}

type answer struct {
	status int
	body   string
}

// New returns an empty CRM that accepts key.
func New(key string) *CRM {
	return &CRM{Key: key, contacts: map[string]*Contact{}, answers: map[string]answer{}}
}

// Applied counts the changes applied: creates, updates and deletes, not
// replays.
func (c *CRM) Applied() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied
}

// Contacts returns the live contacts by email.
func (c *CRM) Contacts() map[string]Contact {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]Contact{}
	for _, ct := range c.contacts {
		out[ct.Email] = *ct
	}
	return out
}

// ServeHTTP implements http.Handler.
func (c *CRM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		fmt.Fprintln(w, "ok")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+c.Key {
		http.Error(w, `{"error": "unauthorized"}`, http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, `{"error": "read body"}`, http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	key := r.Header.Get("Idempotency-Key")
	idem := r.Method + " " + r.URL.Path + " " + key
	a, replay := c.answers[idem]
	if !replay {
		a = c.apply(r.Method, r.URL.Path, body)
		if key != "" && a.status < 500 {
			c.answers[idem] = a
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body) // the client hanging up is its own problem
}

// apply performs one call; c.mu is held.
func (c *CRM) apply(method, path string, body []byte) answer {
	id, hasID := strings.CutPrefix(path, "/contacts/")
	var in struct{ Email, Name string }
	if method == http.MethodPost || method == http.MethodPatch {
		if err := json.Unmarshal(body, &in); err != nil {
			return answer{http.StatusBadRequest, `{"error": "body is not a JSON object"}`}
		}
		if !strings.Contains(in.Email, "@") {
			return answer{http.StatusUnprocessableEntity, fmt.Sprintf(`{"error": "invalid email %q"}`, in.Email)}
		}
	}
	switch {
	case method == http.MethodPost && path == "/contacts":
		c.next++
		ct := &Contact{ID: fmt.Sprintf("ct_%d", c.next), Email: in.Email, Name: in.Name}
		c.contacts[ct.ID] = ct
		c.applied++
		b, _ := json.Marshal(ct) // a struct of strings always marshals
		return answer{http.StatusCreated, string(b)}
	case hasID && c.contacts[id] == nil:
		return answer{http.StatusNotFound, `{"error": "no such contact"}`}
	case hasID && method == http.MethodPatch:
		c.contacts[id].Email, c.contacts[id].Name = in.Email, in.Name
		c.applied++
		return answer{http.StatusOK, `{}`}
	case hasID && method == http.MethodDelete:
		delete(c.contacts, id)
		c.applied++
		return answer{http.StatusNoContent, ""}
	}
	return answer{http.StatusNotFound, `{"error": "no such route"}`}
}
