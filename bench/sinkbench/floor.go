package main

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-cdc/ferry/bench/benchutil"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
)

// httpFloor measures what clients plain HTTP clients (the sink's HTTP
// client, nothing else: no Kafka, no delivery log) get from the partner
// started with partner's flags, with nothing else running: the most any
// sink making that many calls at once could achieve on this machine. It
// returns the rate and the mean call time in seconds.
func httpFloor(bin string, partner []string, clients int) (float64, float64, error) {
	addr := benchutil.FreeAddr()
	p, err := start(filepath.Join(bin, "partnersim"), append([]string{"-addr", addr, "-discard"}, partner...)...)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = p.Process.Kill(); _ = p.Wait() }()
	if err := waitDial(addr); err != nil {
		return 0, 0, err
	}
	cl := webhook.Client(10 * time.Second)
	body := []byte(`{"event_id":"e","tenant_id":"t","event_type":"product.updated","payload":{"n":1}}`)
	const d = 8 * time.Second
	stop := time.Now().Add(d)
	var n, total atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(stop) {
				s := time.Now()
				resp, err := cl.Post("http://"+addr+"/v1/events", "application/json", bytes.NewReader(body))
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n.Add(1)
				total.Add(int64(time.Since(s)))
			}
		})
	}
	wg.Wait()
	if n.Load() == 0 {
		return 0, 0, fmt.Errorf("http floor: no call succeeded")
	}
	return float64(n.Load()) / d.Seconds(), float64(total.Load()) / float64(n.Load()) / 1e9, nil
}
