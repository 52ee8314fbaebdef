package kafkaconf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/retry"
)

func TestValidateNamesEveryProblemWithItsPath(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	brokers := []string{"127.0.0.1:9092"}
	on := TLS{Enabled: true}
	cases := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none: valid
	}{
		{"plaintext, no auth", Config{Brokers: brokers}, nil},
		{"no brokers", Config{}, []string{"kafka.brokers: no brokers"}},
		{"bad broker", Config{Brokers: []string{"localhost"}}, []string{"kafka.brokers[0]"}},
		{"tls with system roots", Config{Brokers: brokers, TLS: on}, nil},
		{"tls with ca, client cert, server name", Config{Brokers: brokers, TLS: TLS{Enabled: true, CAFile: certs.CAFile, CertFile: certs.ClientCertFile, KeyFile: certs.ClientKeyFile, ServerName: "localhost"}}, nil},
		{"tls files while tls is off", Config{Brokers: brokers, TLS: TLS{CAFile: certs.CAFile, ServerName: "x"}}, []string{"kafka.tls.ca_file: set but TLS is off", "kafka.tls.server_name: set but TLS is off"}},
		{"missing ca file", Config{Brokers: brokers, TLS: TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"}}, []string{"kafka.tls.ca_file", "no such file"}},
		{"ca file without a certificate", Config{Brokers: brokers, TLS: TLS{Enabled: true, CAFile: junk}}, []string{"kafka.tls.ca_file", "no PEM certificate"}},
		{"cert without key", Config{Brokers: brokers, TLS: TLS{Enabled: true, CertFile: certs.ClientCertFile}}, []string{"kafka.tls.cert_file, kafka.tls.key_file: give both"}},
		{"cert and wrong key", Config{Brokers: brokers, TLS: TLS{Enabled: true, CertFile: certs.ClientCertFile, KeyFile: certs.KeyFile}}, []string{"kafka.tls.cert_file, kafka.tls.key_file:", "private key does not match"}},
		{"scram over plaintext", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismSCRAMSHA512, Username: "u", Password: "p"}}, nil},
		{"scram over tls", Config{Brokers: brokers, TLS: on, SASL: SASL{Mechanism: MechanismSCRAMSHA256, Username: "u", Password: "p"}}, nil},
		{"plain over tls", Config{Brokers: brokers, TLS: on, SASL: SASL{Mechanism: MechanismPlain, Username: "u", Password: "p"}}, nil},
		{"plain without tls refused", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismPlain, Username: "u", Password: "p"}}, []string{"kafka.sasl.mechanism: PLAIN without TLS sends the credentials in clear text", "kafka.sasl.allow_plaintext"}},
		{"plain without tls, explicitly allowed", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismPlain, Username: "u", Password: "p", AllowPlaintext: true}}, nil},
		{"oauthbearer without tls refused", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismOAuthBearer, Password: "tok"}}, []string{"kafka.sasl.mechanism: OAUTHBEARER without TLS"}},
		{"oauthbearer without token", Config{Brokers: brokers, TLS: on, SASL: SASL{Mechanism: MechanismOAuthBearer}}, []string{"kafka.sasl.password: OAUTHBEARER needs the token"}},
		{"allow_plaintext for scram is meaningless", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismSCRAMSHA256, Username: "u", Password: "p", AllowPlaintext: true}}, []string{"kafka.sasl.allow_plaintext: only means something"}},
		{"unknown mechanism", Config{Brokers: brokers, SASL: SASL{Mechanism: "GSSAPI", Username: "u", Password: "p"}}, []string{`kafka.sasl.mechanism: "GSSAPI": use one of PLAIN, SCRAM-SHA-256`}},
		{"mechanism in lower case", Config{Brokers: brokers, SASL: SASL{Mechanism: "scram-sha-512", Username: "u", Password: "p"}}, nil},
		{"scram without username and password", Config{Brokers: brokers, SASL: SASL{Mechanism: MechanismSCRAMSHA512}}, []string{"kafka.sasl.username: SCRAM-SHA-512 needs a username", "kafka.sasl.password: SCRAM-SHA-512 needs a password"}},
		{"credentials without mechanism", Config{Brokers: brokers, SASL: SASL{Username: "u", Password: "p"}}, []string{"kafka.sasl.mechanism: not set, but a username or password is"}},
		{"msk iam from the environment", Config{Brokers: brokers, TLS: on, SASL: SASL{Mechanism: MechanismAWSMSKIAM}}, nil},
		{"msk iam with half a key", Config{Brokers: brokers, TLS: on, SASL: SASL{Mechanism: MechanismAWSMSKIAM, Username: "AKIA"}}, []string{"for AWS_MSK_IAM give both"}},
		{"every problem at once", Config{TLS: TLS{CertFile: "x"}, SASL: SASL{Mechanism: MechanismPlain}}, []string{"kafka.brokers", "kafka.tls.cert_file", "kafka.sasl.username", "kafka.sasl.password", "kafka.sasl.mechanism: PLAIN without TLS"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.SetDefaults()
			err := tc.cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				if len(tc.cfg.Opts()) == 0 {
					t.Fatal("no client options")
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestSecretPrintsRedacted(t *testing.T) {
	cfg := Config{Brokers: []string{"b:9092"}, SASL: SASL{Mechanism: MechanismPlain, Username: "u", Password: "hunter2"}}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "password", cfg.SASL.Password, "cfg", cfg)
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ym, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", cfg), "%+v": fmt.Sprintf("%+v", cfg), "%#v": fmt.Sprintf("%#v", cfg), "%s": fmt.Sprintf("%s", cfg.SASL.Password),
		"slog": logged.String(), "json": string(js), "yaml": string(ym),
	} {
		if strings.Contains(s, "hunter2") || !strings.Contains(s, "REDACTED") {
			t.Errorf("%s shows the secret or no REDACTED: %s", name, s)
		}
	}
	if cfg.SASL.Password.Reveal() != "hunter2" {
		t.Error("Reveal lost the value")
	}
	var back Config
	if err := yaml.Unmarshal([]byte("sasl:\n  password: s3cret\n"), &back); err != nil || back.SASL.Password.Reveal() != "s3cret" {
		t.Errorf("read from YAML: %q, %v", back.SASL.Password.Reveal(), err)
	}
}

func TestAuthErrorRecognisesBrokerAnswers(t *testing.T) {
	cfg := Config{SASL: SASL{Mechanism: MechanismSCRAMSHA256}}
	for _, err := range []error{kerr.SaslAuthenticationFailed, fmt.Errorf("wrapped: %w", kerr.SaslAuthenticationFailed), kerr.UnsupportedSaslMechanism} {
		got := cfg.AuthError(err)
		if got == nil || !retry.IsPermanent(got) || !strings.Contains(got.Error(), "SASL SCRAM-SHA-256") {
			t.Errorf("AuthError(%v) = %v; want a permanent error naming SASL SCRAM-SHA-256", err, got)
		}
	}
	for _, err := range []error{nil, kerr.NotLeaderForPartition, fmt.Errorf("dial tcp: connection refused")} {
		if got := cfg.AuthError(err); got != nil {
			t.Errorf("AuthError(%v) = %v; want nil", err, got)
		}
	}
}
