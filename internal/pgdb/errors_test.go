package pgdb

import (
	"errors"
	"strings"
	"testing"
)

func TestRedactMasksPasswordsInUserinfoAndQuery(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://ferry:pw1@db:5432/app":                                "postgres://ferry:REDACTED@db:5432/app",
		"postgres://ferry@db/app?password=pw2&sslmode=require":            "postgres://ferry@db/app?password=REDACTED&sslmode=require",
		"postgres://db/app?user=ferry&sslpassword=pw3&application_name=x": "postgres://db/app?user=ferry&sslpassword=REDACTED&application_name=x",
		"host=db password=pw4":                                            "(postgres URL)",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	err := Explain("postgres", "postgres://u@h/db?password=pw5", errors.New("boom"))
	if strings.Contains(err.Error(), "pw5") {
		t.Fatalf("Explain: %v", err)
	}
}
