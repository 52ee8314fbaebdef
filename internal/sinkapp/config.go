package sinkapp

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/ferry-cdc/ferry/internal/cli"
	"github.com/ferry-cdc/ferry/internal/consume"
	"github.com/ferry-cdc/ferry/internal/kafkaconf"
)

// Config is the sink's YAML file.
type Config struct {
	PostgresURL string `yaml:"postgres_url"`
	// PostgresMaxConns sizes the delivery log's connection pool. Default:
	// the integrations' concurrency summed, capped at 64 (each delivery
	// makes two short round trips).
	PostgresMaxConns int32 `yaml:"postgres_max_conns"`

	// Kafka is how to reach the brokers: brokers, TLS, SASL.
	Kafka kafkaconf.Config `yaml:"kafka"`

	// AdminAddr serves /metrics, /healthz, /readyz. Default
	// "127.0.0.1:9465"; "off" disables.
	AdminAddr string `yaml:"admin_addr"`
	// AdminToken protects the admin API (from FERRY_ADMIN_TOKEN only: a
	// secret does not belong in a file or a flag). Required when
	// admin_addr is not loopback.
	AdminToken   string        `yaml:"-"`
	LogFormat    string        `yaml:"log_format"`
	LogLevel     string        `yaml:"log_level"`
	Integrations []Integration `yaml:"integrations"`

	// AdminTokenName names the token's holder in the record of operator
	// acts made through the API (FERRY_ADMIN_TOKEN_NAME; default
	// "admin-token").
	AdminTokenName string `yaml:"-"`

	// AttemptsKept is how many attempts of each delivery the log keeps
	// in ferry.delivery_attempt, at each end: the first N and the last N
	// (request, status, bounded response, error, duration). Default 5;
	// 0 means the default.
	AttemptsKept int `yaml:"attempts_kept"`

	// PostgresStatementTimeout bounds every delivery-log, parked-queue
	// and mapping statement: sent as the connections' statement_timeout
	// (a statement blocked by a lock or a slow server fails) and used as
	// a client-side deadline (a stalled connection fails). The lane
	// backs off and tries again. Default 10s.
	PostgresStatementTimeout time.Duration `yaml:"postgres_statement_timeout"`
	// InstanceID is this process's static consumer group membership
	// (Kafka's group.instance.id): a restarted process with the same id
	// takes its old partitions back at once instead of waiting for its
	// session to time out. Default: "ferry-sink-<host name>" (in
	// Kubernetes the host name is the pod's name). Two live processes
	// must never share one; "off" disables static membership. When
	// integrations share a consumer group, each gets
	// "<instance_id>-<integration>".
	InstanceID string `yaml:"instance_id"`
	// SessionTimeout is how long the group waits for a silent member
	// (killed, partitioned) before giving its partitions to others; a
	// static member restarted within it gets them back at once. Default
	// 30s; 6s to 30m (the broker's usual bounds).
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// AdminAllowedHosts are host names, besides the admin address's own
	// host, IP literals and localhost, that requests to the admin server
	// may carry in their Host header (a proxy's or DNS name). Others are
	// refused (DNS rebinding). Default none.
	AdminAllowedHosts []string `yaml:"admin_allowed_hosts"`

	// MaxBufferedBytes bounds the records (key, value, headers) this
	// process holds in memory, split evenly between the integrations: an
	// integration stops fetching at its share and starts again below half
	// of it. A single record larger than the share is still delivered.
	// Default 64MiB; must be positive.
	MaxBufferedBytes *ByteSize `yaml:"max_buffered_bytes"`
	// FetchMaxBytes bounds one fetch response of an integration's Kafka
	// client (franz-go FetchMaxBytes; one may be buffered and one in
	// flight besides max_buffered_bytes). Default 4MiB; at most 256MiB.
	// It bounds compressed bytes: records that compress well take more
	// memory once decompressed.
	FetchMaxBytes *ByteSize `yaml:"fetch_max_bytes"`
	// FetchMaxPartitionBytes bounds one partition's part of a fetch
	// response (franz-go FetchMaxPartitionBytes); a larger record is still
	// fetched alone. Default 64KiB (compressed: small records that
	// compress well are several times that in memory); at most
	// fetch_max_bytes.
	FetchMaxPartitionBytes *ByteSize `yaml:"fetch_max_partition_bytes"`
}

// Memory defaults (issue 14: bounded by bytes, not record counts).
const (
	defaultMaxBufferedBytes       = 64 << 20
	defaultFetchMaxBytes          = 4 << 20
	defaultFetchMaxPartitionBytes = 64 << 10
	maxFetchMaxBytes              = 256 << 20
)

// Integration is one partner: an engine and its connector.
type Integration struct {
	consume.Config `yaml:",inline"`
	Connector      ConnectorConfig `yaml:"connector"`
}

// outcomeTopics is each integration's outcome topic ("" when its
// outcomes are switched off), for the delivery log.
func (c *Config) outcomeTopics() map[string]string {
	m := map[string]string{}
	for _, in := range c.Integrations {
		m[in.Name] = in.Outcomes.TopicOrOff()
	}
	return m
}

func (c *Config) setDefaults() {
	c.Kafka.SetDefaults()
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:9465"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.PostgresStatementTimeout == 0 {
		c.PostgresStatementTimeout = 10 * time.Second
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 30 * time.Second
	}
	if c.InstanceID == "" {
		c.InstanceID = defaultInstanceID()
	}
	sum := int32(0)
	groups := map[string]int{}
	for i := range c.Integrations {
		c.Integrations[i].SetDefaults()
		sum += int32(c.Integrations[i].Concurrency)
		groups[c.Integrations[i].Group]++
	}
	for i := range c.Integrations {
		in := &c.Integrations[i]
		in.SessionTimeout = c.SessionTimeout
		switch {
		case c.InstanceID == "off":
		case groups[in.Group] > 1:
			in.InstanceID = c.InstanceID + "-" + in.Name
		default:
			in.InstanceID = c.InstanceID
		}
	}
	if c.PostgresMaxConns == 0 {
		c.PostgresMaxConns = min(max(sum, 4), 64)
	}
	c.setMemoryDefaults()
}

// setMemoryDefaults fills the byte limits and gives each integration its
// share of max_buffered_bytes and the fetch limits.
func (c *Config) setMemoryDefaults() {
	for _, d := range []struct {
		p **ByteSize
		v ByteSize
	}{{&c.MaxBufferedBytes, defaultMaxBufferedBytes}, {&c.FetchMaxBytes, defaultFetchMaxBytes}, {&c.FetchMaxPartitionBytes, defaultFetchMaxPartitionBytes}} {
		if *d.p == nil {
			v := d.v
			*d.p = &v
		}
	}
	for i := range c.Integrations {
		in := &c.Integrations[i]
		in.MaxBufferedBytes = max(1, int64(*c.MaxBufferedBytes)/int64(len(c.Integrations)))
		in.FetchMaxBytes = int32(min(max(1, *c.FetchMaxBytes), maxFetchMaxBytes))
		in.FetchMaxPartitionBytes = int32(min(max(1, *c.FetchMaxPartitionBytes), maxFetchMaxBytes))
	}
}

// validateMemory checks the byte limits (after setMemoryDefaults).
func (c *Config) validateMemory() []error {
	var errs []error
	for _, s := range []struct {
		key string
		v   ByteSize
	}{{"max_buffered_bytes", *c.MaxBufferedBytes}, {"fetch_max_bytes", *c.FetchMaxBytes}, {"fetch_max_partition_bytes", *c.FetchMaxPartitionBytes}} {
		if s.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %d: must be positive (e.g. 64MiB; unset means the default)", s.key, int64(s.v)))
		}
	}
	if *c.FetchMaxBytes > maxFetchMaxBytes {
		errs = append(errs, fmt.Errorf("fetch_max_bytes: %s: at most %s", *c.FetchMaxBytes, ByteSize(maxFetchMaxBytes)))
	}
	if *c.FetchMaxPartitionBytes > *c.FetchMaxBytes && *c.FetchMaxPartitionBytes > 0 {
		errs = append(errs, fmt.Errorf("fetch_max_partition_bytes: %s is more than fetch_max_bytes %s", *c.FetchMaxPartitionBytes, *c.FetchMaxBytes))
	}
	return errs
}

// validate returns every problem of the config at once, each with its
// path; each integration's connector block is checked by its type's
// factory.
func (c *Config) validate(reg registry, getenv func(string) string) error {
	var errs []error
	if c.PostgresURL == "" {
		errs = append(errs, errors.New("postgres_url: not set: use --postgres-url or FERRY_POSTGRES_URL"))
	}
	errs = append(errs, c.Kafka.Validate())
	if c.PostgresMaxConns < 0 {
		errs = append(errs, fmt.Errorf("postgres_max_conns: %d: must be positive (0 or unset means the default)", c.PostgresMaxConns))
	}
	if len(c.Integrations) == 0 {
		errs = append(errs, errors.New("integrations: none configured: add at least one in the --config file (see docs/config.md)"))
	}
	seen := map[string]bool{}
	for i, in := range c.Integrations {
		prefix := fmt.Sprintf("integrations[%d]", i)
		if seen[in.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is used twice", prefix, in.Name))
		}
		seen[in.Name] = true
		errs = append(errs, in.Validate(prefix))
		if _, cerrs := reg.build(i, in, getenv, nil); len(cerrs) > 0 {
			errs = append(errs, cerrs...)
		}
	}
	if c.AttemptsKept < 0 {
		errs = append(errs, fmt.Errorf("attempts_kept: %d: give 1 or more (the first and last N attempts of each delivery are kept; default 5)", c.AttemptsKept))
	}
	errs = append(errs, c.validateMemory()...)
	if c.PostgresStatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("postgres_statement_timeout: %s: must be positive (e.g. 10s)", c.PostgresStatementTimeout))
	}
	if c.SessionTimeout < minSessionTimeout || c.SessionTimeout > maxSessionTimeout {
		errs = append(errs, fmt.Errorf("session_timeout: %s: use %s to %s (at least two heartbeats of %s; brokers refuse others by default)",
			c.SessionTimeout, minSessionTimeout, maxSessionTimeout, heartbeatInterval))
	}
	if c.InstanceID != "off" && !validInstanceID(c.InstanceID) {
		errs = append(errs, fmt.Errorf("instance_id: %q: use 1 to 200 of a-z, A-Z, 0-9, '.', '_', '-' (or \"off\")", c.InstanceID))
	}
	if c.AdminAddr != "off" {
		if err := admin.CheckExposure(c.AdminAddr, c.AdminToken); err != nil {
			errs = append(errs, err)
		}
		if err := admin.CheckAllowedHosts(c.AdminAllowedHosts); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := cli.Logger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

type flags struct {
	Config      string          `help:"YAML config file with the integrations (docs/config.md)." env:"FERRY_CONFIG" placeholder:"FILE"`
	PostgresURL *string         `help:"PostgreSQL URL for the delivery log." env:"FERRY_POSTGRES_URL" placeholder:"URL"`
	Kafka       kafkaconf.Flags `embed:""` // --brokers, --kafka-tls*, --kafka-sasl*
	AdminAddr   *string         `help:"Address for /metrics, /healthz, /readyz (default 127.0.0.1:9465; 'off' disables)." env:"FERRY_ADMIN_ADDR" name:"admin-addr"`
	AdminHosts  []string        `help:"Host names the admin server answers to besides its address, IPs and localhost (comma-separated; a proxy's or DNS name). The admin token comes from FERRY_ADMIN_TOKEN only." env:"FERRY_ADMIN_ALLOWED_HOSTS" name:"admin-allowed-hosts" sep:","`
	LogFormat   *string         `help:"Log format: json (default) or text." env:"FERRY_LOG_FORMAT" name:"log-format"`
	LogLevel    *string         `help:"Log level: debug, info (default), warn, error." env:"FERRY_LOG_LEVEL" name:"log-level"`

	PostgresStatementTimeout *time.Duration `help:"Timeout of each delivery-log and mapping statement (default 10s)." env:"FERRY_POSTGRES_STATEMENT_TIMEOUT" name:"postgres-statement-timeout"`
	InstanceID               *string        `help:"Static consumer group member id (default: host name; 'off' disables). Unique per live process." env:"FERRY_INSTANCE_ID" name:"instance-id"`
	SessionTimeout           *time.Duration `help:"Consumer group session timeout: how long a silent member keeps its partitions (default 30s)." env:"FERRY_SESSION_TIMEOUT" name:"session-timeout"`
	MaxBufferedBytes         *string        `help:"Bytes of records the process holds in memory, split between the integrations; fetching pauses at it (default 64MiB)." env:"FERRY_MAX_BUFFERED_BYTES" name:"max-buffered-bytes" placeholder:"SIZE"`
	FetchMaxBytes            *string        `help:"Bytes of one Kafka fetch response (default 4MiB)." env:"FERRY_FETCH_MAX_BYTES" name:"fetch-max-bytes" placeholder:"SIZE"`
	FetchMaxPartitionBytes   *string        `help:"Bytes of one partition in a fetch response (default 64KiB)." env:"FERRY_FETCH_MAX_PARTITION_BYTES" name:"fetch-max-partition-bytes" placeholder:"SIZE"`

	Run      runCmd      `cmd:"" default:"withargs" help:"Consume and deliver (the default command)."`
	Status   statusCmd   `cmd:"" help:"Deliveries by integration and state, and parked queue depth per tenant."`
	Failures failuresCmd `cmd:"" help:"Failed and rejected deliveries: status code, reason, attempts, and the partner calls."`
	Retry    retryCmd    `cmd:"" help:"Deliver again from the stored copy: one event, or in bulk (--tenant, --state, --since, --all). It goes through its tenant's lane AFTER the events already delivered."`
	Skip     skipCmd     `cmd:"" help:"Skip a delivery (its lane moves on); a reason is required and recorded."`
	Pause    pauseCmd    `cmd:"" help:"Pause an integration, or one tenant of it: its lanes wait without calling the partner. Survives restarts."`
	Resume   resumeCmd   `cmd:"" help:"Resume a paused integration or tenant."`
	Tenants  tenantsCmd  `cmd:"" help:"List tenants, or switch one on (resync it at the partner) or off (roll it back)."`
	Prune    pruneCmd    `cmd:"" help:"Remove finished deliveries (and their kept attempts) last updated before --older-than; never an unfinished one."`
}

type tenantsCmd struct {
	List    tenantsListCmd   `cmd:"" default:"withargs" help:"Tenants per integration: switch, pause, deliveries by state, parked events, last resync."`
	Enable  tenantsEnableCmd `cmd:"" help:"Switch a tenant on and resync it: each of its objects' latest event is delivered again (created or updated at the partner)."`
	Disable tenantsSwitchCmd `cmd:"" help:"Switch a tenant off and roll it back: every object its mappings hold is deleted at the partner. Its new events are recorded as skipped."`
}

type tenantsListCmd struct {
	Integration string `help:"Only this integration."`
	Limit       int    `help:"At most this many tenants (1 to 10000); the next page's cursor is printed last." default:"1000"`
	After       string `help:"Start after this cursor (printed by the previous page)."`
	JSON        bool   `help:"Print JSON."`
}

type tenantsSwitchCmd struct {
	Integration string `help:"The integration (with its connector in --config, for the rollback)." required:""`
	Tenant      string `help:"The tenant." required:""`
	Reason      string `help:"Why (recorded)."`
	NoRollback  bool   `help:"Only switch off; leave the partner's objects as they are." name:"no-rollback"`
}

type tenantsEnableCmd struct {
	Integration string        `help:"The integration." required:""`
	Tenant      string        `help:"The tenant." required:""`
	Reason      string        `help:"Why (recorded)."`
	Wait        time.Duration `help:"How long to wait for cdc to serve the resync request." default:"10s"`
}

type pauseCmd struct {
	Integration string `help:"The integration." required:""`
	Tenant      string `help:"Only this tenant (default: the whole integration)."`
	Reason      string `help:"Why (recorded)."`
}

type resumeCmd struct {
	Integration string `help:"The integration." required:""`
	Tenant      string `help:"Only this tenant (default: the whole integration)."`
	Reason      string `help:"Why (recorded)."`
}

type runCmd struct{}

type statusCmd struct {
	JSON bool `help:"Print JSON."`
}

type failuresCmd struct {
	Integration string        `help:"Only this integration."`
	Tenant      string        `help:"Only this tenant."`
	State       []string      `help:"States to list (default failed,rejected)." enum:"failed,rejected,expired,compensating,compensated,compensation_failed,waiting,in_flight,pending,skipped,succeeded" sep:","`
	Since       time.Duration `help:"Only deliveries updated within this long (e.g. 1h)."`
	Limit       int           `help:"At most this many rows (a page)." default:"100"`
	Cursor      string        `help:"Continue after the previous page (the cursor it printed)."`
	Calls       bool          `help:"Show every kept attempt with its partner calls (request and response, bounded), status, error and duration."`
	JSON        bool          `help:"Print JSON."`
}

type retryCmd struct {
	Integration string        `help:"The integration." required:""`
	Event       string        `help:"One event id (rejected, failed, expired, skipped, compensated, compensation_failed or compensating)."`
	Tenant      string        `help:"Bulk: only this tenant's deliveries."`
	State       []string      `help:"Bulk: these states (default rejected,failed,expired,compensated,compensation_failed)." enum:"rejected,failed,expired,skipped,compensated,compensation_failed,compensating" sep:","`
	Since       string        `help:"Bulk: only deliveries updated since then: a duration back (1h) or an RFC 3339 time." placeholder:"TIME"`
	All         bool          `help:"Bulk: every delivery of the integration in the default states."`
	Reason      string        `help:"Why (recorded with your OS user in ferry.operator_action)."`
	Wait        time.Duration `help:"How long to wait for the running sink to deliver them again, reporting their states (0: do not wait)." default:"10s"`
}

type pruneCmd struct {
	OlderThan time.Duration `help:"Remove finished deliveries last updated longer ago than this (e.g. 720h). Keep it above the topics' retention: the log is what deduplicates a replayed event." required:"" name:"older-than"`
}

type skipCmd struct {
	Integration string `help:"The integration." required:""`
	Event       string `help:"The event id." required:""`
	Reason      string `help:"Why (recorded in the delivery log and ferry.operator_action)." required:""`
}

var errHelp = errors.New("help shown")

type command struct {
	name string
	cfg  Config
	f    flags
	// reg is the connector types this binary knows; getenv the
	// environment it was given.
	reg    registry
	getenv func(string) string
	// warning is what would stop `sink run` with this config, for the
	// other commands, which still work (an operator's shell may lack a
	// connector's secrets, and status must work when the config is
	// broken); they print it first.
	warning error
}

func parse(args []string, getenv func(string) string, stdout io.Writer) (*command, error) {
	return parseWith(Options{}, args, getenv, stdout)
}

func parseWith(opts Options, args []string, getenv func(string) string, stdout io.Writer) (*command, error) {
	reg, err := newRegistry(opts)
	if err != nil {
		return nil, err
	}
	var cfg Config
	if err := cli.LoadYAML(cli.FindConfigPath(args, getenv), &cfg); err != nil {
		return nil, err
	}
	var f flags
	exited := false
	parser, err := kong.New(&f, kong.Name("sink"),
		kong.Description("Deliver outbox events from Kafka to partner APIs, in order per tenant, isolating failures."),
		kong.Writers(stdout, stdout), kong.Exit(func(int) { exited = true }),
		kong.Resolvers(cli.EnvResolver(getenv)),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}))
	if err != nil {
		return nil, err
	}
	kctx, err := parser.Parse(args)
	if exited {
		return nil, errHelp
	}
	if err != nil {
		return nil, err
	}
	set := cli.Override
	f.Kafka.Apply(&cfg.Kafka, getenv)
	set(&cfg.PostgresURL, f.PostgresURL)
	set(&cfg.AdminAddr, f.AdminAddr)
	if len(f.AdminHosts) > 0 {
		cfg.AdminAllowedHosts = f.AdminHosts
	}
	set(&cfg.LogFormat, f.LogFormat)
	set(&cfg.LogLevel, f.LogLevel)
	set(&cfg.InstanceID, f.InstanceID)
	if f.PostgresStatementTimeout != nil {
		cfg.PostgresStatementTimeout = *f.PostgresStatementTimeout
	}
	if f.SessionTimeout != nil {
		cfg.SessionTimeout = *f.SessionTimeout
	}
	for _, o := range []struct {
		flag string
		v    *string
		p    **ByteSize
	}{{"--max-buffered-bytes", f.MaxBufferedBytes, &cfg.MaxBufferedBytes}, {"--fetch-max-bytes", f.FetchMaxBytes, &cfg.FetchMaxBytes},
		{"--fetch-max-partition-bytes", f.FetchMaxPartitionBytes, &cfg.FetchMaxPartitionBytes}} {
		if o.v == nil {
			continue
		}
		v, err := parseByteSize(*o.v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.flag, err)
		}
		*o.p = &v
	}
	cfg.AdminToken = getenv("FERRY_ADMIN_TOKEN")
	cfg.AdminTokenName = getenv("FERRY_ADMIN_TOKEN_NAME")
	cfg.setDefaults()
	words := strings.Fields(kctx.Command())
	name := words[0]
	if name == "tenants" {
		name = "tenants " + words[1]
	}
	if name == "run" {
		if err := cfg.validate(reg, getenv); err != nil {
			return nil, fmt.Errorf("invalid configuration:\n%w", err)
		}
	} else if cfg.PostgresURL == "" {
		return nil, errors.New("postgres_url: not set: use --postgres-url or FERRY_POSTGRES_URL")
	} else if len(cfg.Kafka.Brokers) > 0 {
		// status reads consumer lag from Kafka with these settings.
		if err := cfg.Kafka.Validate(); err != nil {
			return nil, fmt.Errorf("invalid configuration:\n%w", err)
		}
	}
	c := &command{name: name, cfg: cfg, f: f, reg: reg, getenv: getenv}
	if name != "run" && len(cfg.Integrations) > 0 {
		c.warning = cfg.validate(reg, getenv)
	}
	return c, nil
}

// Static membership bounds: Kafka brokers accept session timeouts in
// group.min.session.timeout.ms..group.max.session.timeout.ms (6s..30m by
// default), and a session must outlast a few heartbeats.
const (
	minSessionTimeout = 6 * time.Second
	maxSessionTimeout = 30 * time.Minute
	heartbeatInterval = 3 * time.Second // franz-go's default, kept
)

// defaultInstanceID is the host name (in Kubernetes, the pod's name),
// with characters Kafka does not allow in a group.instance.id replaced;
// "off" when there is none.
func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "off"
	}
	b := []byte(host)
	for i, c := range b {
		if !instanceIDChar(c) {
			b[i] = '-'
		}
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return "ferry-sink-" + string(b)
}

func validInstanceID(s string) bool {
	if len(s) == 0 || len(s) > 200 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !instanceIDChar(s[i]) {
			return false
		}
	}
	return true
}

func instanceIDChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}
