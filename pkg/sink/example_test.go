package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/sink"
)

// crmConfig is the crm connector's block: the keys beside "type".
type crmConfig struct {
	URL       string        `yaml:"url"`
	APIKeyEnv string        `yaml:"api_key_env"`
	Timeout   time.Duration `yaml:"timeout"`
}

// crm POSTs each event to a CRM's contacts API.
type crm struct {
	url, key string
	client   *http.Client
}

// newCRM is the crm type's sink.Factory: decode, check, build.
func newCRM(b *sink.Block) (connector.Connector, error) {
	var cfg crmConfig
	if err := b.Decode(&cfg); err != nil {
		return nil, err
	}
	var errs []error
	if cfg.URL == "" {
		errs = append(errs, errors.New(b.Path()+".url: required (e.g. https://crm.example/api)"))
	}
	if cfg.APIKeyEnv == "" || b.Getenv(cfg.APIKeyEnv) == "" {
		errs = append(errs, fmt.Errorf("%s.api_key_env: %q: name an environment variable holding the API key", b.Path(), cfg.APIKeyEnv))
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &crm{url: cfg.URL, key: b.Getenv(cfg.APIKeyEnv), client: &http.Client{Timeout: cfg.Timeout}}, nil
}

// Deliver implements connector.Connector.
func (c *crm) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	body, _ := json.Marshal(req.Event.Payload)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/contacts", bytes.NewReader(body))
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: err.Error()}
	}
	hreq.Header.Set("Authorization", "Bearer "+c.key)
	hreq.Header.Set("Idempotency-Key", req.IdempotencyKey) // the same on every attempt
	resp, err := c.client.Do(hreq)
	if err != nil {
		return connector.Result{}, &connector.Failure{Reason: "no answer", Err: err} // retried
	}
	defer resp.Body.Close()
	call := connector.Call{Method: http.MethodPost, URL: c.url + "/contacts", Status: resp.StatusCode}
	switch {
	case resp.StatusCode < 300:
		return connector.Result{Calls: []connector.Call{call}}, nil
	case resp.StatusCode == 429 || resp.StatusCode >= 500:
		return connector.Result{}, &connector.Failure{Status: resp.StatusCode, Calls: []connector.Call{call}}
	default: // the CRM refuses this event for good: the tenant's lane parks
		return connector.Result{}, &connector.Rejection{Status: resp.StatusCode, Reason: resp.Status, Calls: []connector.Call{call}}
	}
}

// A binary of your own: register the crm connector type and run the sink
// command line. Here Run is given a config whose crm block has problems:
// they are reported with their paths, beside the rest of the config's,
// and the exit code is 2.
func Example() {
	// main.go would only say: sink.Main(sink.Connector("crm", newCRM))
	dir, err := os.MkdirTemp("", "sink-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "sink.yaml")
	err = os.WriteFile(cfg, []byte(`
postgres_url: postgres://ferry@127.0.0.1/app
kafka: {brokers: ["127.0.0.1:9092"]}
integrations:
  - name: crm
    topics: [outbox.customer]
    connector:
      type: crm
      api_key_env: EXAMPLE_CRM_KEY_UNSET
      timeout: 5s
      retries: 3
`), 0o600)
	if err != nil {
		panic(err)
	}
	noEnv := func(string) string { return "" }
	code := sink.Run(context.Background(), []string{"--config", cfg}, noEnv, os.Stdout, os.Stdout, sink.Connector("crm", newCRM))
	fmt.Println("exit code", code)
	// Output:
	// sink: invalid configuration:
	// integrations[0].connector.retries: unknown key (line 11): use one of api_key_env, timeout, url
	// exit code 2
}
