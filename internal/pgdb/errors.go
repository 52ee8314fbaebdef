package pgdb

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferry-cdc/ferry/internal/safe"
)

// Explain wraps a connection error with what the operator can do about
// it. what names the connection ("postgres", "replication").
func Explain(what, rawURL string, err error) error {
	if err == nil {
		return nil
	}
	target := Redact(rawURL)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "28000":
		return fmt.Errorf("%s connection to %s refused by pg_hba.conf (%s): allow this host/user, for replication connections too: %w", what, target, pgErr.Message, err)
	case errors.As(err, &pgErr) && pgErr.Code == "28P01":
		return fmt.Errorf("%s connection to %s: wrong password: %w", what, target, err)
	case errors.As(err, &pgErr) && pgErr.Code == "3D000":
		return fmt.Errorf("%s connection to %s: database does not exist: create it or fix the URL: %w", what, target, err)
	case errors.As(err, &pgErr):
		return fmt.Errorf("%s connection to %s: %w", what, target, err)
	default:
		return fmt.Errorf("%s connection to %s failed (is PostgreSQL running and reachable? check --postgres-url / FERRY_POSTGRES_URL): %w", what, target, err)
	}
}

// Redact returns the URL with its password replaced, for messages and
// logs: the one in userinfo and password-like query parameters
// (password, sslpassword, ...; see safe.SecretParam).
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return "(postgres URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), safe.Redacted)
	}
	u.RawQuery = safe.Query(u.RawQuery)
	return u.String()
}

// Unfixable reports whether a connection error is one that waiting and
// reconnecting cannot fix: a wrong password, a pg_hba.conf refusal, an
// unparsable URL. Callers mark it retry.Permanent.
func Unfixable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "28000" || pgErr.Code == "28P01"
	}
	var perr *pgconn.ParseConfigError
	return errors.As(err, &perr)
}
