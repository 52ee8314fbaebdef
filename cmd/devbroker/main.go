// Command devbroker runs a Kafka-protocol broker (franz-go's kfake) on
// 127.0.0.1:9092 for the demo, local development and kcat, with no Docker
// and no Kafka install. Topics are auto-created. Data is kept in
// --data-dir (default .devbroker in the working folder; "" keeps it in
// memory) between restarts. kfake writes topic metadata only on a clean
// shutdown (SIGINT/SIGTERM), so after a crash only the topics named in
// --topics come back: name the ones you must keep.
//
// With --tls-cert-file and --tls-key-file it speaks only TLS; with
// --sasl-mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) it requires SASL
// and knows one user, --sasl-username with --sasl-password (or
// FERRY_DEVBROKER_SASL_PASSWORD): a secured local broker for trying
// Ferry's kafka.tls and kafka.sasl settings (scripts/kafka-certs.sh makes
// the certificates).
//
// --sync-writes fsyncs every produced batch before answering (kfake's
// SyncWrites); without it a batch is written to the OS page cache before
// the answer, which survives a kill -9 of the broker but not a crash of
// the machine. --control-addr serves a small HTTP switch that injects
// retriable produce errors, for fault tests (make chaos):
//
//	POST   /faults/produce?error=NOT_LEADER_OR_FOLLOWER   fail every produce until removed
//	DELETE /faults                                         remove every injected fault
//	GET    /faults                                         faults installed, requests they answered
//
// It is a development tool, not a production broker.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", 9092, "TCP port on 127.0.0.1 (0 picks a free one)")
	partitions := fs.Int("partitions", 4, "partitions of auto-created topics")
	dataDir := fs.String("data-dir", ".devbroker", `keep data in this folder between restarts ("" = memory only)`)
	topics := fs.String("topics", "", "comma-separated topics to create at start (kept across crashes with --data-dir)")
	maxBytes := fs.Int("message-max-bytes", 0, "broker message.max.bytes (default: Kafka's 1048588)")
	certFile := fs.String("tls-cert-file", "", "PEM server certificate: speak only TLS (with --tls-key-file)")
	keyFile := fs.String("tls-key-file", "", "PEM key of --tls-cert-file")
	clientCA := fs.String("tls-client-ca-file", "", "PEM CA: require client certificates it signed (mutual TLS)")
	mech := fs.String("sasl-mechanism", "", "require SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default: none)")
	user := fs.String("sasl-username", "ferry", "the SASL user")
	pass := fs.String("sasl-password", "", "the SASL user's password (default: $FERRY_DEVBROKER_SASL_PASSWORD)")
	syncWrites := fs.Bool("sync-writes", false, "with --data-dir, fsync every produced batch before answering (slower; survives a machine crash, not only a kill -9)")
	controlAddr := fs.String("control-addr", "", `serve the fault-injection switch on this address (e.g. 127.0.0.1:9093; "" = off): POST /faults/produce?error=NAME, DELETE /faults, GET /faults`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *syncWrites && *dataDir == "" {
		fmt.Fprintln(stderr, "devbroker: --sync-writes needs --data-dir (memory-only data has nothing to fsync)")
		return 2
	}
	secure, err := security(*certFile, *keyFile, *clientCA, *mech, *user, *pass, getenv("FERRY_DEVBROKER_SASL_PASSWORD"))
	if err != nil {
		fmt.Fprintf(stderr, "devbroker: %v\n", err)
		return 2
	}
	opts := append([]kfake.Opt{kfake.Ports(*port), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(*partitions)}, secure...)
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	if *syncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	if *topics != "" {
		opts = append(opts, kfake.SeedTopics(int32(*partitions), strings.Split(*topics, ",")...))
	}
	if *maxBytes > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{"message.max.bytes": fmt.Sprint(*maxBytes)}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		fmt.Fprintf(stderr, "devbroker: start on 127.0.0.1:%d: %v (is the port taken? use --port)\n", *port, err)
		return 1
	}
	fmt.Fprintf(stdout, "devbroker listening on %s%s\n", strings.Join(c.ListenAddrs(), ","), describe(*certFile, *clientCA, *mech, *user))
	if *controlAddr != "" {
		ln, err := net.Listen("tcp", *controlAddr)
		if err != nil {
			c.Close()
			fmt.Fprintf(stderr, "devbroker: control switch on %s: %v (use another --control-addr)\n", *controlAddr, err)
			return 1
		}
		srv := &http.Server{Handler: &faultSwitch{c: c}, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				fmt.Fprintf(stderr, "devbroker: control switch: %v\n", err)
			}
		}()
		defer srv.Close() // nothing to flush: the switch keeps no state worth saving
		fmt.Fprintf(stdout, "devbroker fault switch on http://%s/faults\n", ln.Addr())
	}
	<-ctx.Done()
	c.Close() // a clean shutdown writes topic metadata to --data-dir
	return 0
}

// security returns the kfake options for TLS and SASL.
func security(certFile, keyFile, clientCA, mech, user, pass, envPass string) ([]kfake.Opt, error) {
	var opts []kfake.Opt
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--tls-cert-file and --tls-key-file: give both or neither")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert-file, --tls-key-file: %w", err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if clientCA != "" {
			pem, err := os.ReadFile(clientCA)
			if err != nil {
				return nil, fmt.Errorf("--tls-client-ca-file: %w", err)
			}
			cfg.ClientCAs = x509.NewCertPool()
			if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-client-ca-file: %s holds no PEM certificate", clientCA)
			}
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
		opts = append(opts, kfake.TLS(cfg))
	} else if clientCA != "" {
		return nil, errors.New("--tls-client-ca-file: needs --tls-cert-file and --tls-key-file")
	}
	if mech == "" {
		return opts, nil
	}
	switch mech {
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		return nil, fmt.Errorf("--sasl-mechanism: %q: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", mech)
	}
	if pass == "" {
		pass = envPass
	}
	if user == "" || pass == "" {
		return nil, errors.New("--sasl-mechanism: needs --sasl-username and --sasl-password (or FERRY_DEVBROKER_SASL_PASSWORD)")
	}
	return append(opts, kfake.EnableSASL(), kfake.Superuser(mech, user, pass)), nil
}

// describe says how to connect, for the start-up line.
func describe(certFile, clientCA, mech, user string) string {
	var parts []string
	if certFile != "" {
		parts = append(parts, "TLS only")
	}
	if clientCA != "" {
		parts = append(parts, "client certificates required")
	}
	if mech != "" {
		parts = append(parts, fmt.Sprintf("SASL %s as %s", mech, user))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// faultSwitch is the --control-addr handler: it installs and removes
// kfake faults on produce requests.
type faultSwitch struct {
	c *kfake.Cluster

	mu     sync.Mutex
	active []installed
}

type installed struct {
	err    string
	handle *kfake.FaultHandle
}

// retriableProduceErrors are the errors the switch injects: ones a
// producer retries by itself. NOT_LEADER_OR_FOLLOWER is answered before
// the batch is written (the client refreshes metadata and resends);
// REQUEST_TIMED_OUT after it is written (the client resends, and the
// idempotent producer's sequence numbers drop the copy).
var retriableProduceErrors = map[string]*kerr.Error{
	"NOT_LEADER_OR_FOLLOWER": kerr.NotLeaderForPartition,
	"REQUEST_TIMED_OUT":      kerr.RequestTimedOut,
	"NOT_ENOUGH_REPLICAS":    kerr.NotEnoughReplicas,
}

func (f *faultSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == "/faults/produce" && r.Method == http.MethodPost:
		name := r.URL.Query().Get("error")
		kerrv, ok := retriableProduceErrors[name]
		if !ok {
			http.Error(w, "error: one of NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS", http.StatusBadRequest)
			return
		}
		h := f.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerrv, Count: -1})
		f.active = append(f.active, installed{err: name, handle: h})
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/faults" && r.Method == http.MethodDelete:
		for _, in := range f.active {
			in.handle.Remove()
		}
		f.active = nil
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/faults" && r.Method == http.MethodGet:
		for _, in := range f.active {
			fmt.Fprintf(w, "produce %s hits=%d\n", in.err, in.handle.Hits())
		}
	default:
		http.NotFound(w, r)
	}
}
