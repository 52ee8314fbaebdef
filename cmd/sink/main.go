// Command sink consumes Ferry's outbox topics and delivers each tenant's
// events to partner APIs in order, isolating failing tenants; see
// README.md and docs/config.md. It is pkg/sink's Main with the built-in
// connector types only: build your own binary with more the same way
// (docs/connectors.md, "Writing a Go connector").
package main

import "github.com/ferry-cdc/ferry/pkg/sink"

func main() { sink.Main() }
