// Command devbroker runs a Kafka-protocol broker (franz-go's kfake) on
// 127.0.0.1:9092 for the demo, local development and kcat, with no Docker
// and no Kafka install. Topics are auto-created. Data is kept in
// --data-dir (default .devbroker in the working folder; "" keeps it in
// memory) between restarts. kfake writes topic metadata only on a clean
// shutdown (SIGINT/SIGTERM), so after a crash only the topics named in
// --topics come back: name the ones you must keep.
//
// It is a development tool, not a production broker.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opts := []kfake.Opt{kfake.Ports(*port), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(*partitions)}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
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
	<-ctx.Done()
	c.Close() // a clean shutdown writes topic metadata to --data-dir
	return 0
}
