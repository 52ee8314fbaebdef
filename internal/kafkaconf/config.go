package kafkaconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ferry-cdc/ferry/internal/retry"
)

// SASL mechanisms.
const (
	MechanismPlain       = "PLAIN"
	MechanismSCRAMSHA256 = "SCRAM-SHA-256"
	MechanismSCRAMSHA512 = "SCRAM-SHA-512"
	// MechanismOAuthBearer sends a bearer token (the password field) as
	// is; refreshing it is the operator's job.
	MechanismOAuthBearer = "OAUTHBEARER"
	// MechanismAWSMSKIAM signs in to Amazon MSK with an IAM access key:
	// the username is the access key id and the password the secret
	// access key, or, when both are empty, AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the environment.
	MechanismAWSMSKIAM = "AWS_MSK_IAM"
)

var mechanisms = []string{MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512, MechanismOAuthBearer, MechanismAWSMSKIAM}

// Config is the kafka section both binaries share: where the brokers are
// and how to connect to them securely.
type Config struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string `yaml:"brokers"`
	// TLS encrypts connections and checks the brokers' certificates.
	TLS TLS `yaml:"tls"`
	// SASL authenticates the client. Zero: no authentication.
	SASL SASL `yaml:"sasl"`
}

// TLS configures encrypted connections to the brokers.
type TLS struct {
	// Enabled turns TLS on. Default false (plaintext). The other fields
	// require it.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of the certificate authorities that sign the
	// brokers' certificates. Empty: the system's roots (right for
	// managed services with public certificates).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client's PEM certificate and key, for
	// brokers that require mutual TLS. Both or neither. Read at start:
	// a renewed certificate takes a restart.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name checked in the brokers' certificates.
	// Empty: each broker's host name, as dialled.
	ServerName string `yaml:"server_name"`
}

// SASL configures authentication.
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or
	// AWS_MSK_IAM. Empty: no SASL.
	Mechanism string `yaml:"mechanism"`
	// Username is the SASL user (the access key id for AWS_MSK_IAM; the
	// optional authorization id for OAUTHBEARER).
	Username string `yaml:"username"`
	// Password is the user's password (the secret access key for
	// AWS_MSK_IAM; the token for OAUTHBEARER). Prefer
	// FERRY_KAFKA_SASL_PASSWORD to writing it in a file.
	Password Secret `yaml:"password"`
	// AllowPlaintext permits PLAIN or OAUTHBEARER without TLS, which
	// sends the password or token readable to anyone on the network.
	// Default false: refused. Only for a trusted local network.
	AllowPlaintext bool `yaml:"allow_plaintext"`
}

// SetDefaults normalises the mechanism's spelling (scram-sha-512 →
// SCRAM-SHA-512). No other field has a default.
func (c *Config) SetDefaults() {
	c.SASL.Mechanism = strings.ToUpper(strings.TrimSpace(c.SASL.Mechanism))
}

// Validate returns every problem at once, each with its key path (e.g.
// kafka.sasl.mechanism) and what to do. It reads the TLS files, so a
// missing or malformed certificate is a config error, not a connection
// failure.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("kafka.brokers: no brokers: set --brokers or FERRY_KAFKA_BROKERS (e.g. 127.0.0.1:9092)"))
	}
	for i, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			errs = append(errs, fmt.Errorf("kafka.brokers[%d]: %q is not host:port", i, b))
		}
	}
	t := c.TLS
	if !t.Enabled {
		for _, f := range []struct{ key, val string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"server_name", t.ServerName}} {
			if f.val != "" {
				errs = append(errs, fmt.Errorf("kafka.tls.%s: set but TLS is off: set kafka.tls.enabled (FERRY_KAFKA_TLS=true), or remove it", f.key))
			}
		}
	} else {
		if (t.CertFile == "") != (t.KeyFile == "") {
			errs = append(errs, errors.New("kafka.tls.cert_file, kafka.tls.key_file: give both (a client certificate and its key) or neither"))
		}
		if _, err := t.config(); err != nil {
			errs = append(errs, err)
		}
	}
	s := c.SASL
	switch {
	case s.Mechanism == "":
		if s.Username != "" || s.Password != "" {
			errs = append(errs, fmt.Errorf("kafka.sasl.mechanism: not set, but a username or password is: set it to one of %s (FERRY_KAFKA_SASL_MECHANISM)", strings.Join(mechanisms, ", ")))
		}
	case !valid(s.Mechanism):
		errs = append(errs, fmt.Errorf("kafka.sasl.mechanism: %q: use one of %s", s.Mechanism, strings.Join(mechanisms, ", ")))
	case s.Mechanism == MechanismAWSMSKIAM:
		if (s.Username == "") != (s.Password == "") {
			errs = append(errs, errors.New("kafka.sasl.username, kafka.sasl.password: for AWS_MSK_IAM give both (access key id and secret access key) or neither (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are read from the environment)"))
		}
	case s.Mechanism == MechanismOAuthBearer:
		if s.Password == "" {
			errs = append(errs, errors.New("kafka.sasl.password: OAUTHBEARER needs the token: set FERRY_KAFKA_SASL_PASSWORD"))
		}
	default:
		if s.Username == "" {
			errs = append(errs, fmt.Errorf("kafka.sasl.username: %s needs a username: set kafka.sasl.username or FERRY_KAFKA_SASL_USERNAME", s.Mechanism))
		}
		if s.Password == "" {
			errs = append(errs, fmt.Errorf("kafka.sasl.password: %s needs a password: set FERRY_KAFKA_SASL_PASSWORD", s.Mechanism))
		}
	}
	if (s.Mechanism == MechanismPlain || s.Mechanism == MechanismOAuthBearer) && !t.Enabled && !s.AllowPlaintext {
		errs = append(errs, fmt.Errorf("kafka.sasl.mechanism: %s without TLS sends the credentials in clear text: set kafka.tls.enabled (FERRY_KAFKA_TLS=true), or, on a trusted network only, kafka.sasl.allow_plaintext (FERRY_KAFKA_SASL_ALLOW_PLAINTEXT=true)", s.Mechanism))
	}
	if s.AllowPlaintext && s.Mechanism != MechanismPlain && s.Mechanism != MechanismOAuthBearer {
		errs = append(errs, errors.New("kafka.sasl.allow_plaintext: only means something for PLAIN or OAUTHBEARER: remove it"))
	}
	return errors.Join(errs...)
}

func valid(m string) bool {
	for _, v := range mechanisms {
		if m == v {
			return true
		}
	}
	return false
}

// config builds the TLS client config, reading the files.
func (t TLS) config() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	var errs []error
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka.tls.ca_file: %w", err))
		} else {
			c.RootCAs = x509.NewCertPool()
			if !c.RootCAs.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("kafka.tls.ca_file: %s holds no PEM certificate", t.CAFile))
			}
		}
	}
	if t.CertFile != "" && t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka.tls.cert_file, kafka.tls.key_file: %w", err))
		} else {
			c.Certificates = []tls.Certificate{cert}
		}
	}
	return c, errors.Join(errs...)
}

// Opts are the franz-go options for these settings: seed brokers, TLS
// (kgo.DialTLSConfig) and SASL (kgo.SASL). Append them to a client's
// own options. The config must be valid; if a TLS file became unreadable
// since Validate, every dial fails with that (permanent) error.
func (c Config) Opts() []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...)}
	if c.TLS.Enabled {
		tc, err := c.TLS.config()
		if err != nil {
			err = retry.Permanent(fmt.Errorf("kafka tls: %w", err))
			opts = append(opts, kgo.Dialer(func(context.Context, string, string) (net.Conn, error) { return nil, err }))
		} else {
			opts = append(opts, kgo.DialTLSConfig(tc))
		}
	}
	if m := c.SASL.mechanism(); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts
}

func (s SASL) mechanism() sasl.Mechanism {
	user, pass := s.Username, s.Password.Reveal()
	switch s.Mechanism {
	case MechanismPlain:
		return plain.Auth{User: user, Pass: pass}.AsMechanism()
	case MechanismSCRAMSHA256:
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
	case MechanismSCRAMSHA512:
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()
	case MechanismOAuthBearer:
		return oauth.Auth{Zid: user, Token: pass}.AsMechanism()
	case MechanismAWSMSKIAM:
		return aws.ManagedStreamingIAM(func(context.Context) (aws.Auth, error) {
			if user != "" {
				return aws.Auth{AccessKey: user, SecretKey: pass, UserAgent: "ferry"}, nil
			}
			a := aws.Auth{AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), SessionToken: os.Getenv("AWS_SESSION_TOKEN"), UserAgent: "ferry"}
			if a.AccessKey == "" || a.SecretKey == "" {
				return a, retry.Permanent(errors.New("kafka sasl AWS_MSK_IAM: no credentials: set kafka.sasl.username and the password, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
			}
			return a, nil
		})
	}
	return nil
}
