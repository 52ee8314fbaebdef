package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/ferry-cdc/ferry/internal/cli"
	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/publish"
	"github.com/ferry-cdc/ferry/internal/route"
)

// Config is the whole cdc configuration: the YAML file's shape.
type Config struct {
	// PostgresURL connects to the database holding the outbox; the role
	// needs REPLICATION (or superuser) and CREATE for setup.
	PostgresURL string         `yaml:"postgres_url"`
	Kafka       publish.Config `yaml:"kafka"`
	Outbox      outbox.Config  `yaml:"outbox"`
	Route       route.Config   `yaml:"route"`
	// AdminAddr serves /metrics, /healthz, /readyz. Default
	// "127.0.0.1:9464"; "off" disables.
	AdminAddr string `yaml:"admin_addr"`
	LogFormat string `yaml:"log_format"`
	LogLevel  string `yaml:"log_level"`

	// AdminToken protects /tenants and the profiles on the admin address
	// (from FERRY_ADMIN_TOKEN only: a secret does not belong in a file or
	// a flag). Required when admin_addr is not loopback.
	AdminToken string `yaml:"-"`
	// AdminAllowedHosts are host names, besides the admin address's own
	// host, IP literals and localhost, that requests to the admin server
	// may carry in their Host header. Others are refused (DNS
	// rebinding). Default none.
	AdminAllowedHosts []string `yaml:"admin_allowed_hosts"`
}

// checkAdmin refuses an admin server open to the network without a
// token, and malformed allowed host names.
func (c *Config) checkAdmin() error {
	if c.AdminAddr == "off" {
		return nil
	}
	return errors.Join(admin.CheckExposure(c.AdminAddr, c.AdminToken), admin.CheckAllowedHosts(c.AdminAllowedHosts))
}

func (c *Config) setDefaults() {
	c.Kafka.SetDefaults()
	c.Outbox.SetDefaults()
	c.Route.SetDefaults()
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:9464"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
}

// validate returns every problem at once; commands that do not talk to
// Kafka (setup, status, prune) do not need its settings.
func (c *Config) validate(needKafka bool) error {
	var errs []error
	if c.PostgresURL == "" {
		errs = append(errs, errors.New("postgres_url: not set: use --postgres-url or FERRY_POSTGRES_URL (e.g. postgres://ferry@127.0.0.1:5432/app)"))
	}
	if needKafka {
		errs = append(errs, c.Kafka.Validate(), c.Route.Validate())
	}
	errs = append(errs, c.Outbox.Validate())
	if _, err := cli.Logger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// flags are the command line; every flag also reads an environment
// variable, and overrides the config file. Pointer fields stay nil unless
// given, so the file's values survive.
type flags struct {
	Config      string          `help:"YAML config file (keys in docs/config.md). Flags and environment override it." env:"FERRY_CONFIG" placeholder:"FILE"`
	PostgresURL *string         `help:"PostgreSQL URL of the outbox database." env:"FERRY_POSTGRES_URL" placeholder:"URL"`
	Kafka       kafkaconf.Flags `embed:""` // --brokers, --kafka-tls*, --kafka-sasl*
	Table       *string         `help:"Outbox table, schema.table (default public.outbox)." env:"FERRY_OUTBOX_TABLE"`
	Slot        *string         `help:"Replication slot name (default ferry_outbox)." env:"FERRY_SLOT"`
	Publication *string         `help:"Publication name (default ferry_outbox)." env:"FERRY_PUBLICATION"`
	NoCreate    bool            `help:"Do not create the outbox table, publication or slot; fail if missing." env:"FERRY_NO_CREATE"`
	Topic       *string         `help:"Topic template over TenantID, AggregateType, AggregateID, EventType (default outbox.{{.AggregateType}})." env:"FERRY_TOPIC_TEMPLATE" name:"topic-template"`
	Key         *string         `help:"Record key: tenant (default; per-tenant order) or tenant_aggregate (per-aggregate order)." env:"FERRY_KEY" enum:"tenant,tenant_aggregate," default:""`
	Envelope    *string         `help:"Record value: raw (default; the payload as written) or cloudevents." env:"FERRY_ENVELOPE" enum:"raw,cloudevents," default:""`
	DeadLetter  *string         `help:"Topic for events that cannot be published normally (default ferry.cdc.dead_letter)." env:"FERRY_DEAD_LETTER_TOPIC" name:"dead-letter-topic"`
	OnBadEvent  *string         `help:"Bad events: dead_letter (default) or stop (exit naming the event; the slot stays before it)." env:"FERRY_ON_BAD_EVENT" enum:"dead_letter,stop," default:""`
	Partitions  *string         `help:"Outbox partitioning when cdc creates the table: daily (dropped whole by prune) or empty." env:"FERRY_OUTBOX_PARTITIONS" enum:",daily" name:"partitions"`
	MsgPrefix   *string         `help:"Prefix of table-less outbox messages (pg_logical_emit_message) (default ferry.outbox)." env:"FERRY_MESSAGE_PREFIX" name:"message-prefix"`
	Heartbeat   *time.Duration  `help:"Heartbeat interval (default 10s; negative disables)." env:"FERRY_HEARTBEAT_INTERVAL" name:"heartbeat-interval"`
	StatusEvery *time.Duration  `help:"How often the confirmed position is sent to the slot (default 1s)." env:"FERRY_STATUS_INTERVAL" name:"status-interval"`
	ResyncChunk *int            `help:"Objects a resync emits per transaction, each chunk read inside its own watermark window (default 2000)." env:"FERRY_RESYNC_CHUNK" name:"resync-chunk"`
	ResyncRate  *float64        `help:"Objects a resync emits per second at most (default 3000; negative: no cap)." env:"FERRY_RESYNC_RATE" name:"resync-rate"`
	MaxBuffered *int            `help:"Records in flight to Kafka before the reader waits (default 20000)." env:"FERRY_MAX_BUFFERED_RECORDS" name:"max-buffered-records"`
	MaxBytes    *int64          `help:"Bytes (key, value, headers) in flight to Kafka before the reader waits (default 33554432)." env:"FERRY_MAX_BUFFERED_BYTES" name:"max-buffered-bytes"`
	MaxRecord   *int            `help:"Largest record (and produce batch) in bytes; at most the broker's message.max.bytes (default 1000000)." env:"FERRY_MAX_RECORD_BYTES" name:"max-record-bytes"`
	ReconnMax   *time.Duration  `help:"Longest wait between reconnect attempts after Postgres or Kafka went away (default 30s)." env:"FERRY_RECONNECT_MAX" name:"reconnect-max"`
	Recover     bool            `help:"If the slot was dropped, recreated or invalidated, create a new one and backfill rows since the last confirmed commit (duplicates possible) instead of refusing to start." env:"FERRY_RECOVER_LOST_SLOT" name:"recover-lost-slot"`
	AdminAddr   *string         `help:"Address for /metrics, /healthz, /readyz (default 127.0.0.1:9464; 'off' disables)." env:"FERRY_ADMIN_ADDR" name:"admin-addr"`
	AdminHosts  []string        `help:"Host names the admin server answers to besides its address, IPs and localhost (comma-separated). The admin token comes from FERRY_ADMIN_TOKEN only." env:"FERRY_ADMIN_ALLOWED_HOSTS" name:"admin-allowed-hosts" sep:","`
	LogFormat   *string         `help:"Log format: json (default) or text." env:"FERRY_LOG_FORMAT" name:"log-format"`
	LogLevel    *string         `help:"Log level: debug, info (default), warn, error." env:"FERRY_LOG_LEVEL" name:"log-level"`

	Run      runCmd      `cmd:"" default:"withargs" help:"Stream the outbox to Kafka (the default command)."`
	Setup    setupCmd    `cmd:"" help:"Apply migrations and create the outbox table, publication and slot, then exit. Idempotent."`
	Backfill backfillCmd `cmd:"" help:"Publish rows already in the outbox table (all, one tenant, or since a time), then exit."`
	Resync   resyncCmd   `cmd:"" help:"Republish a tenant's latest event per aggregate for one integration (what sink tenants enable asks for), then exit. The running cdc streams them in order."`
	Status   statusCmd   `cmd:"" help:"Show the slot, its confirmed LSN and lag, then exit."`
	Prune    pruneCmd    `cmd:"" help:"Delete outbox rows older than --older-than (never ones a lost-slot recovery could need), then exit."`
}

type pruneCmd struct {
	OlderThan time.Duration `help:"Delete rows created longer ago than this (e.g. 720h)." required:""`
}

type runCmd struct{}
type setupCmd struct{}
type backfillCmd struct {
	Tenant string    `help:"Only this tenant's rows."`
	Since  time.Time `help:"Only rows created at or after this RFC 3339 time." format:"2006-01-02T15:04:05Z07:00"`
}
type resyncCmd struct {
	Integration string `help:"The sink integration to resync." required:""`
	Tenant      string `help:"The tenant." required:""`
}
type statusCmd struct {
	JSON    bool `help:"Print JSON."`
	Tenants int  `help:"Show this many tenants, newest event first." default:"20"`
}

var errHelp = errors.New("help shown")

// command is a parsed, validated invocation.
type command struct {
	name string
	cfg  Config
	bf   backfillCmd
	st   statusCmd
	pr   pruneCmd
	rs   resyncCmd
}

func parse(args []string, getenv func(string) string, stdout io.Writer) (*command, error) {
	var cfg Config
	cfg.Outbox.CreateObjects = true
	if err := cli.LoadYAML(cli.FindConfigPath(args, getenv), &cfg); err != nil {
		return nil, err
	}
	var f flags
	exited := false
	parser, err := kong.New(&f, kong.Name("cdc"),
		kong.Description("Stream a PostgreSQL outbox table into tenant-keyed Kafka topics by logical replication, losing nothing."),
		kong.Writers(stdout, stdout),
		kong.Exit(func(int) { exited = true }),
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
	f.apply(&cfg)
	f.Kafka.Apply(&cfg.Kafka.Config, getenv)
	cfg.AdminToken = getenv("FERRY_ADMIN_TOKEN")
	cfg.setDefaults()
	name := strings.Fields(kctx.Command())[0]
	if err := cfg.validate(name == "run" || name == "backfill"); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if name == "run" {
		if err := cfg.checkAdmin(); err != nil {
			return nil, fmt.Errorf("invalid configuration:\n%w", err)
		}
	}
	c := &command{name: name, cfg: cfg, bf: f.Backfill, st: f.Status, pr: f.Prune, rs: f.Resync}
	return c, nil
}

func (f *flags) apply(cfg *Config) {
	set := cli.Override
	set(&cfg.PostgresURL, f.PostgresURL)
	set(&cfg.Outbox.Table, f.Table)
	set(&cfg.Outbox.Slot, f.Slot)
	set(&cfg.Outbox.Publication, f.Publication)
	if f.NoCreate {
		cfg.Outbox.CreateObjects = false
	}
	set(&cfg.Route.TopicTemplate, f.Topic)
	set(&cfg.Route.Key, f.Key)
	set(&cfg.Route.Envelope, f.Envelope)
	set(&cfg.Kafka.DeadLetterTopic, f.DeadLetter)
	set(&cfg.Kafka.OnBadEvent, f.OnBadEvent)
	set(&cfg.Outbox.MessagePrefix, f.MsgPrefix)
	set(&cfg.Outbox.Partitions, f.Partitions)
	if f.Heartbeat != nil {
		cfg.Outbox.HeartbeatInterval = *f.Heartbeat
	}
	if f.ResyncRate != nil {
		cfg.Outbox.ResyncRate = *f.ResyncRate
	}
	if f.ResyncChunk != nil {
		cfg.Outbox.ResyncChunk = *f.ResyncChunk
	}
	if f.StatusEvery != nil {
		cfg.Outbox.StatusInterval = *f.StatusEvery
	}
	if f.MaxBuffered != nil {
		cfg.Kafka.MaxBufferedRecords = *f.MaxBuffered
	}
	if f.MaxBytes != nil {
		cfg.Kafka.MaxBufferedBytes = *f.MaxBytes
	}
	if f.MaxRecord != nil {
		cfg.Kafka.MaxRecordBytes = *f.MaxRecord
	}
	if f.ReconnMax != nil {
		cfg.Outbox.ReconnectMax = *f.ReconnMax
	}
	if f.Recover {
		cfg.Outbox.RecoverLostSlot = true
	}
	set(&cfg.AdminAddr, f.AdminAddr)
	if len(f.AdminHosts) > 0 {
		cfg.AdminAllowedHosts = f.AdminHosts
	}
	set(&cfg.LogFormat, f.LogFormat)
	set(&cfg.LogLevel, f.LogLevel)
}
