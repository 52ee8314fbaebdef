package kafkatest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Certs are a throwaway certificate authority and the certificates it
// signed for one test, as PEM files in a temporary folder: a server
// certificate for 127.0.0.1 and localhost, and a client certificate for
// mutual TLS.
type Certs struct {
	CAFile, CertFile, KeyFile     string // the CA; the server's certificate and key
	ClientCertFile, ClientKeyFile string
	// Server is the brokers' TLS config (server certificate; client
	// certificates signed by the CA are verified when given).
	Server *tls.Config
}

// NewCerts creates a CA and its certificates in t.TempDir().
func NewCerts(t testing.TB) *Certs {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ferry test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("create CA: %v", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parse CA: %v", err)
	}
	c := &Certs{CAFile: filepath.Join(dir, "ca.pem")}
	writePEM(t, c.CAFile, "CERTIFICATE", caDER)
	issue := func(serial int64, name string, usage x509.ExtKeyUsage, certFile, keyFile string) tls.Certificate {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatalf("create certificate %s: %v", name, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatalf("marshal key: %v", err)
		}
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatalf("load %s: %v", certFile, err)
		}
		return cert
	}
	c.CertFile, c.KeyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	server := issue(2, "localhost", x509.ExtKeyUsageServerAuth, c.CertFile, c.KeyFile)
	c.ClientCertFile, c.ClientKeyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	issue(3, "ferry", x509.ExtKeyUsageClientAuth, c.ClientCertFile, c.ClientKeyFile)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c.Server = &tls.Config{Certificates: []tls.Certificate{server}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return k
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// NewSecured starts a kfake cluster that speaks only TLS (certs.Server)
// and, with kfake.EnableSASL and kfake.Superuser or kfake.User in opts,
// requires SASL. It is always kfake, whatever FERRY_TEST_BACKEND says:
// the shared container has no TLS listener. Set ClientOpts on the result
// so Client and Consume connect securely.
func NewSecured(t testing.TB, certs *Certs, opts ...kfake.Opt) *Broker {
	t.Helper()
	return startKfake(t, nextPrefix(), append([]kfake.Opt{kfake.TLS(certs.Server)}, opts...))
}
