package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/retry"
)

// With TLS and SASL flags the dev broker speaks only TLS and requires the
// user: Ferry's client settings and kcat (librdkafka, an independent
// client, with SASL_SSL) get in; a wrong password does not.
func TestDevbrokerWithTLSAndSCRAM(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	addr, stop := start(t, "--data-dir", "", "--tls-cert-file", certs.CertFile, "--tls-key-file", certs.KeyFile,
		"--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "dev", "--sasl-password", "dev-secret")
	defer stop()
	cfg := kafkaconf.Config{Brokers: []string{addr}, TLS: kafkaconf.TLS{Enabled: true, CAFile: certs.CAFile},
		SASL: kafkaconf.SASL{Mechanism: "SCRAM-SHA-512", Username: "dev", Password: "dev-secret"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produceSecure(ctx, t, cfg, "over TLS")

	wrong := cfg
	wrong.SASL.Password = "nope"
	wcl, err := kgo.NewClient(wrong.Opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer wcl.Close()
	if err := wrong.Ping(ctx, wcl); !retry.IsPermanent(err) || !strings.Contains(err.Error(), "SASL SCRAM-SHA-512") {
		t.Fatalf("wrong password: %v", err)
	}

}

// With a client CA the dev broker requires client certificates: kcat
// (librdkafka, an independent client) reads over mutual TLS what Ferry's
// client settings wrote, and is refused without its certificate. (kcat
// 2.0.2 cannot do SASL against kfake: its librdkafka wants SaslHandshake
// v0, which kfake does not offer.)
func TestDevbrokerWithMutualTLSAndKcat(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat not installed: run `make deps` (apt-get install kcat)")
	}
	certs := kafkatest.NewCerts(t)
	addr, stop := start(t, "--data-dir", "", "--tls-cert-file", certs.CertFile, "--tls-key-file", certs.KeyFile, "--tls-client-ca-file", certs.CAFile)
	defer stop()
	cfg := kafkaconf.Config{Brokers: []string{addr}, TLS: kafkaconf.TLS{Enabled: true, CAFile: certs.CAFile, CertFile: certs.ClientCertFile, KeyFile: certs.ClientKeyFile}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produceSecure(ctx, t, cfg, "over mTLS")
	tlsArgs := []string{"-b", addr, "-X", "security.protocol=SSL", "-X", "ssl.ca.location=" + certs.CAFile}
	out, err := exec.CommandContext(ctx, kcat, append(tlsArgs, "-X", "ssl.certificate.location="+certs.ClientCertFile, "-X", "ssl.key.location="+certs.ClientKeyFile,
		"-C", "-t", "secure", "-o", "beginning", "-e", "-q", "-f", `%k=%s\n`)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "acme=over mTLS") {
		t.Fatalf("kcat over mutual TLS: %v\n%s", err, out)
	}
	out, err = exec.CommandContext(ctx, kcat, append(tlsArgs, "-L", "-m", "3")...).CombinedOutput()
	if err == nil {
		t.Fatalf("kcat without a client certificate listed metadata:\n%s", out)
	}
}

func TestDevbrokerRefusesHalfASecurityConfig(t *testing.T) {
	for _, args := range [][]string{
		{"--tls-cert-file", "x.pem"},
		{"--tls-client-ca-file", "ca.pem"},
		{"--sasl-mechanism", "GSSAPI", "--sasl-password", "p"},
		{"--sasl-mechanism", "PLAIN"},
	} {
		var out, errb strings.Builder
		if code := run(context.Background(), append(args, "--port", "0", "--data-dir", ""), func(string) string { return "" }, &out, &errb); code != 2 || errb.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q", args, code, errb.String())
		}
	}
}

// produceSecure writes acme=value to the topic "secure" with Ferry's
// client settings cfg.
func produceSecure(ctx context.Context, t *testing.T, cfg kafkaconf.Config, value string) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(cfg.Opts(), kgo.AllowAutoTopicCreation())...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "secure", Key: []byte("acme"), Value: []byte(value)}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}
