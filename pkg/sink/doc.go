// Package sink builds a Ferry sink binary with your own connectors.
//
// The stock sink (cmd/sink) is this package's Main with nothing added:
// the built-in connector types http (the declarative HTTP connector,
// pkg/connector/httpconn) and webhook. A binary of your own registers
// more types by name and gets the same command line — run, status,
// failures, retry, skip, pause, resume, tenants — the same config file,
// admin API, metrics and guarantees:
//
//	func main() {
//		sink.Main(sink.Connector("crm", newCRM))
//	}
//
// An integration whose connector block says "type: crm" is then built by
// newCRM, a Factory. The factory decodes the rest of the block into its
// own struct with Block.Decode (strictly: an unknown key is an error
// naming its path), checks it, and returns a connector.Connector (plus,
// optionally, connector.Undoer, connector.Prober and connector.Intender). Its errors are
// reported with their paths, together with every other problem of the
// config, and the sink exits with code 2 before it touches Kafka or
// Postgres.
//
// Where it sits: the sink's engine (consumer group, tenant lanes,
// delivery log, retries, breaker, ID mappings) stays internal to Ferry;
// it calls your connector's Deliver once per event, in each tenant's
// order, from many goroutines at once (never two events of one tenant at
// the same time), and records what it returns. The contract is package
// connector's; pkg/connector/connectortest checks a connector against
// it, and pkg/sink/sinktest starts the Postgres and Kafka an end-to-end
// test needs. docs/connectors.md ("Writing a Go connector") walks from
// the first line of code to a running binary; examples/custom-connector
// is a complete one.
//
// Main and Run may be called from any goroutine; a Factory is called
// from the goroutine that runs Run.
package sink
