package kafkaconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/retry"
)

// probeTimeout bounds the probe that tells a connection closed during
// SASL authentication from one closed for any other reason.
const probeTimeout = 10 * time.Second

// Ping checks that a broker answers cl, a client built with c.Opts(). It
// returns nil, or Explain's reading of the failure: rejected credentials
// and refused certificates come back marked retry.Permanent, anything
// else (a broker that is down) unchanged, for the caller to retry.
func (c Config) Ping(ctx context.Context, cl *kgo.Client) error {
	err := cl.Ping(ctx)
	if err == nil {
		return nil
	}
	return c.Explain(ctx, err)
}

// Explain classifies a Kafka client error. When the brokers refused the
// credentials (SASL_AUTHENTICATION_FAILED, an unsupported mechanism, or a
// connection closed during SASL authentication, which is how kfake and
// some proxies refuse) or refused the TLS handshake (an unknown authority,
// a wrong server name, a rejected client certificate), it returns an
// error marked retry.Permanent that names SASL and the mechanism (or
// TLS) and what to check. Otherwise it returns err unchanged.
//
// A closed connection is ambiguous, so when SASL is on Explain confirms it
// with one short probe client (at most 10 s) that watches the SASL
// exchange: only a failure inside it counts as rejected credentials.
func (c Config) Explain(ctx context.Context, err error) error {
	if err == nil || retry.IsPermanent(err) {
		return err
	}
	if e := c.AuthError(err); e != nil {
		return e
	}
	if c.SASL.Mechanism == "" || !closed(err) || ctx.Err() != nil {
		return err
	}
	if c.closesDuringSASL(ctx) {
		return retry.Permanent(fmt.Errorf("kafka: SASL %s authentication failed: the broker closed the connection during SASL authentication (%w): check kafka.sasl.username (FERRY_KAFKA_SASL_USERNAME), the password (FERRY_KAFKA_SASL_PASSWORD) and that the broker accepts %s", c.SASL.Mechanism, err, c.SASL.Mechanism))
	}
	return err
}

// AuthError returns a permanent error naming SASL and the mechanism (or
// TLS) if err is one the brokers answer to bad credentials or a refused
// certificate, and nil otherwise. It needs no network: a connection
// closed during SASL authentication is not recognised here (see Explain).
func (c Config) AuthError(err error) error {
	if err == nil {
		return nil
	}
	mech := c.SASL.Mechanism
	if mech == "" {
		mech = "(none configured)"
	}
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed):
		return retry.Permanent(fmt.Errorf("kafka: SASL %s authentication failed: %w: check kafka.sasl.username (FERRY_KAFKA_SASL_USERNAME) and the password (FERRY_KAFKA_SASL_PASSWORD)", mech, err))
	case errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState):
		return retry.Permanent(fmt.Errorf("kafka: SASL %s refused by the broker: %w: set kafka.sasl.mechanism (FERRY_KAFKA_SASL_MECHANISM) to one it accepts", mech, err))
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		alert    tls.AlertError
	)
	switch {
	case errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return retry.Permanent(fmt.Errorf("kafka: TLS: the broker's certificate is not trusted: %w: check kafka.tls.ca_file (FERRY_KAFKA_TLS_CA_FILE) and kafka.tls.server_name", err))
	case errors.As(err, &alert), remoteTLSAlert(err):
		return retry.Permanent(fmt.Errorf("kafka: TLS: the broker refused the handshake: %w: check the client certificate (kafka.tls.cert_file, kafka.tls.key_file)", err))
	}
	return nil
}

// remoteTLSAlert reports whether the broker ended the TLS handshake with
// an alert (crypto/tls reports it as a net.OpError "remote error"), such
// as "certificate required".
func remoteTLSAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.HasPrefix(op.Err.Error(), "tls: ")
}

// closed reports whether err is a connection the broker closed.
func closed(err error) bool {
	var first *kgo.ErrFirstReadEOF
	return errors.As(err, &first) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// closesDuringSASL connects once more with a hook on the SASL requests and
// reports whether the broker cut the connection inside the exchange.
func (c Config) closesDuringSASL(ctx context.Context) bool {
	var h saslWatch
	cl, err := kgo.NewClient(append(c.Opts(), kgo.WithHooks(&h))...)
	if err != nil {
		return false
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	return cl.Ping(pctx) != nil && h.failed.Load()
}

// saslWatch records a SASL request whose write or read failed.
type saslWatch struct{ failed atomic.Bool }

// OnBrokerE2E implements kgo.HookBrokerE2E.
func (h *saslWatch) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e kgo.BrokerE2E) {
	if (key == int16(kmsg.SASLHandshake) || key == int16(kmsg.SASLAuthenticate)) && (e.ReadErr != nil || e.WriteErr != nil) {
		h.failed.Store(true)
	}
}
