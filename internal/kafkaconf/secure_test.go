package kafkaconf

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

// client builds a client from cfg and closes it when the test ends.
func client(t *testing.T, cfg Config, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	cl, err := kgo.NewClient(append(cfg.Opts(), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func TestConnectsOverTLSWithEachSASLMechanism(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	b := kafkatest.NewSecured(t, certs, kfake.EnableSASL(),
		kfake.Superuser(MechanismSCRAMSHA512, "ferry512", "pw-512"),
		kfake.Superuser(MechanismSCRAMSHA256, "ferry256", "pw-256"),
		kfake.Superuser(MechanismPlain, "ferryplain", "pw-plain"))
	for _, tc := range []struct {
		name string
		tls  TLS
		sasl SASL
	}{
		{"SCRAM-SHA-512", TLS{Enabled: true, CAFile: certs.CAFile}, SASL{Mechanism: MechanismSCRAMSHA512, Username: "ferry512", Password: "pw-512"}},
		{"SCRAM-SHA-256 with a client certificate and server name", TLS{Enabled: true, CAFile: certs.CAFile, CertFile: certs.ClientCertFile, KeyFile: certs.ClientKeyFile, ServerName: "localhost"}, SASL{Mechanism: MechanismSCRAMSHA256, Username: "ferry256", Password: "pw-256"}},
		{"PLAIN over TLS", TLS{Enabled: true, CAFile: certs.CAFile}, SASL{Mechanism: MechanismPlain, Username: "ferryplain", Password: "pw-plain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Brokers: b.Addrs, TLS: tc.tls, SASL: tc.sasl}
			cl := client(t, cfg, kgo.AllowAutoTopicCreation())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := cfg.Ping(ctx, cl); err != nil {
				t.Fatalf("ping: %v", err)
			}
			topic := b.TopicPrefix + "secure"
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte(tc.name)}).FirstErr(); err != nil {
				t.Fatalf("produce: %v", err)
			}
			b.ClientOpts = cfg.Opts()
			got := b.Consume(t, 30*time.Second, kafkatest.AtLeast(1), topic)
			found := false
			for _, r := range got {
				found = found || string(r.Value) == tc.name
			}
			if !found {
				t.Fatalf("record not read back over TLS+SASL: %d records", len(got))
			}
		})
	}
}

func TestRejectedCredentialsArePermanentAndNameSASL(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	b := kafkatest.NewSecured(t, certs, kfake.EnableSASL(),
		kfake.Superuser(MechanismSCRAMSHA512, "ferry", "right"),
		kfake.Superuser(MechanismPlain, "ferry", "right"))
	for _, mech := range []string{MechanismSCRAMSHA512, MechanismPlain} {
		t.Run(mech, func(t *testing.T) {
			cfg := Config{Brokers: b.Addrs, TLS: TLS{Enabled: true, CAFile: certs.CAFile}, SASL: SASL{Mechanism: mech, Username: "ferry", Password: "wrong"}}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := cfg.Ping(ctx, client(t, cfg))
			if err == nil {
				t.Fatal("ping with a wrong password succeeded")
			}
			if !retry.IsPermanent(err) {
				t.Errorf("not marked permanent: %v", err)
			}
			for _, w := range []string{"SASL " + mech + " authentication failed", "closed the connection during SASL authentication", "FERRY_KAFKA_SASL_PASSWORD"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
}

func TestUntrustedBrokerCertificateIsPermanentAndNamesTLS(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	b := kafkatest.NewSecured(t, certs)
	cfg := Config{Brokers: b.Addrs, TLS: TLS{Enabled: true}} // system roots do not know the test CA
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cfg.Ping(ctx, client(t, cfg))
	if err == nil || !retry.IsPermanent(err) || !strings.Contains(err.Error(), "kafka: TLS: the broker's certificate is not trusted") {
		t.Fatalf("got %v; want a permanent TLS error", err)
	}
}

func TestBrokerDownIsNotPermanent(t *testing.T) {
	addr := testutil.DeadAddr(t) // connection refused
	cfg := Config{Brokers: []string{addr}, TLS: TLS{Enabled: true}, SASL: SASL{Mechanism: MechanismSCRAMSHA512, Username: "u", Password: "p"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cfg.Ping(ctx, client(t, cfg))
	if err == nil || retry.IsPermanent(err) {
		t.Fatalf("got %v; want a retriable error", err)
	}
}

func TestMutualTLSSendsTheClientCertificate(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	certs.Server = certs.Server.Clone()
	certs.Server.ClientAuth = tls.RequireAndVerifyClientCert
	b := kafkatest.NewSecured(t, certs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	with := Config{Brokers: b.Addrs, TLS: TLS{Enabled: true, CAFile: certs.CAFile, CertFile: certs.ClientCertFile, KeyFile: certs.ClientKeyFile}}
	if err := with.Ping(ctx, client(t, with)); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	without := Config{Brokers: b.Addrs, TLS: TLS{Enabled: true, CAFile: certs.CAFile}}
	err := without.Ping(ctx, client(t, without))
	if err == nil {
		t.Fatal("a broker that requires a client certificate let a client without one in")
	}
	if !retry.IsPermanent(err) || !strings.Contains(err.Error(), "kafka: TLS: the broker refused the handshake") {
		t.Fatalf("without a client certificate: %v; want a permanent TLS error", err)
	}
}
