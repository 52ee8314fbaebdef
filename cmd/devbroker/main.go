// Command devbroker runs a Kafka-protocol broker (franz-go's kfake) on
// 127.0.0.1:9092 for the demo, local development and kcat, with no Docker
// and no Kafka install. Topics are auto-created. Data is kept in
// --data-dir (default .devbroker in the working folder; "" keeps it in
// memory) between restarts. kfake writes topic metadata only on a clean
// shutdown (SIGINT/SIGTERM), so after a crash only the topics named in
// --topics come back: name the ones you must keep.
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
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", 9092, "TCP port on 127.0.0.1 (0 picks a free one)")
	partitions := fs.Int("partitions", 4, "partitions of auto-created topics")
	dataDir := fs.String("data-dir", ".devbroker", `keep data in this folder between restarts ("" = memory only)`)
	topics := fs.String("topics", "", "comma-separated topics to create at start (kept across crashes with --data-dir)")
	maxBytes := fs.Int("message-max-bytes", 0, "broker message.max.bytes (default: Kafka's 1048588)")
	syncWrites := fs.Bool("sync-writes", false, "with --data-dir, fsync every produced batch before answering (slower; survives a machine crash, not only a kill -9)")
	controlAddr := fs.String("control-addr", "", `serve the fault-injection switch on this address (e.g. 127.0.0.1:9093; "" = off): POST /faults/produce?error=NAME, DELETE /faults, GET /faults`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *syncWrites && *dataDir == "" {
		fmt.Fprintln(stderr, "devbroker: --sync-writes needs --data-dir (memory-only data has nothing to fsync)")
		return 2
	}
	opts := []kfake.Opt{kfake.Ports(*port), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(*partitions)}
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
	fmt.Fprintf(stdout, "devbroker listening on %s\n", strings.Join(c.ListenAddrs(), ","))
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
