// Command crm-sink is Ferry's sink with one more connector type, crm:
// every command of the stock sink (run, status, failures, retry, skip,
// pause, resume, tenants), its config file and guarantees, and
// integrations whose connector block says "type: crm".
//
// Copy this directory into a module of your own, replace package crm
// with your connector, and build: go build -o crm-sink .
package main

import (
	"github.com/ferry-cdc/ferry/pkg/sink"

	"example.com/crm-sink/crm"
)

func main() {
	sink.Main(sink.Connector("crm", crm.New))
}
