package kafkaconf

import "log/slog"

// Secret is a string that never prints: String, GoString, logs, JSON and
// YAML output show REDACTED (or nothing when it is empty). Reveal returns
// the value for the one place that needs it.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) redacted() string {
	if s == "" {
		return ""
	}
	return "REDACTED"
}

// String returns REDACTED, or "" for an empty secret.
func (s Secret) String() string { return s.redacted() }

// GoString returns REDACTED for %#v.
func (s Secret) GoString() string { return `"` + s.redacted() + `"` }

// LogValue keeps the secret out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.redacted()) }

// MarshalText keeps the secret out of JSON and YAML output.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.redacted()), nil }

// UnmarshalText reads the secret from a config file.
func (s *Secret) UnmarshalText(b []byte) error {
	*s = Secret(b)
	return nil
}
