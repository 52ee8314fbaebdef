package ops

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/ferry-cdc/ferry/internal/delivery"
)

// Tenants view page sizes: the default when a request names none, and the
// most one page may hold.
const (
	DefaultTenantsLimit = 1000
	MaxTenantsLimit     = 10000
)

// TenantsPage lists up to limit tenants (0: DefaultTenantsLimit) of an
// integration (or all when "") after the cursor from a previous page (""
// for the first), in (tenant, integration) order, and the cursor of the
// next page ("" after the last).
func (s *Service) TenantsPage(ctx context.Context, integration, cursor string, limit int) ([]delivery.Tenant, string, error) {
	if limit == 0 {
		limit = DefaultTenantsLimit
	}
	if limit < 0 || limit > MaxTenantsLimit {
		return nil, "", &InputError{Status: 400, Msg: "limit: use 1 to 10000"}
	}
	after, err := decodeTenantCursor(cursor)
	if err != nil {
		return nil, "", &InputError{Status: 400, Msg: err.Error()}
	}
	ts, next, err := s.Log.TenantsPage(ctx, integration, after, limit)
	if ts == nil {
		ts = []delivery.Tenant{}
	}
	if err != nil || next == nil {
		return ts, "", err
	}
	return ts, base64.RawURLEncoding.EncodeToString([]byte(next.TenantID + "\x00" + next.Integration)), nil
}

func decodeTenantCursor(c string) (delivery.TenantKey, error) {
	if c == "" {
		return delivery.TenantKey{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	tenant, integration, ok := strings.Cut(string(b), "\x00")
	if err != nil || !ok {
		return delivery.TenantKey{}, errors.New("after: not a cursor from a previous page")
	}
	return delivery.TenantKey{TenantID: tenant, Integration: integration}, nil
}

// atoiOr0 reads an optional number ("" is 0).
func atoiOr0(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	return strconv.Atoi(v)
}
