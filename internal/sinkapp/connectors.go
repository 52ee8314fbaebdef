package sinkapp

import (
	"encoding"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/httpconn"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
)

// Factory builds one integration's connector from its connector block.
// It is called once per integration to validate the config (by every
// command) and again to run it, so it must not contact the partner or
// start goroutines. Its errors are reported with the block's path (see
// Block.report).
type Factory func(b Block) (connector.Connector, error)

// Options are what a sink binary adds to the stock command (pkg/sink
// fills them).
type Options struct {
	// Connectors are connector types beside the built-in http and
	// webhook, by the name the config's connector.type gives.
	Connectors map[string]Factory
}

// builtins are the stock connector types; they go through the same
// registry as a user's.
func builtins() map[string]Factory {
	return map[string]Factory{"http": httpFactory, "webhook": webhookFactory}
}

// registry is the connector types a command knows.
type registry map[string]Factory

func newRegistry(opts Options) (registry, error) {
	r := registry(builtins())
	for name, f := range opts.Connectors {
		switch {
		case name == "":
			return nil, errors.New("a connector type is registered without a name")
		case f == nil:
			return nil, fmt.Errorf("connector type %q is registered without a factory", name)
		case r[name] != nil:
			return nil, fmt.Errorf("connector type %q is registered twice (http and webhook are built in)", name)
		}
		r[name] = f
	}
	return r, nil
}

func (r registry) names() string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// ConnectorConfig is an integration's connector block: its type, and the
// rest of the block kept for the type's factory to decode.
type ConnectorConfig struct {
	Type string
	node *yaml.Node
}

// UnmarshalYAML keeps the block; the type's factory decodes it strictly
// (Block.Decode).
func (c *ConnectorConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: connector: want a mapping with a type (e.g. type: http)", n.Line)
	}
	c.node = n
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "type" {
			return n.Content[i+1].Decode(&c.Type)
		}
	}
	return nil
}

// Block is one integration's connector block as its factory sees it.
type Block struct {
	// Integration is the integration's name.
	Integration string
	// Path is the block's place in the config file
	// ("integrations[2].connector"), for error messages.
	Path string
	// Getenv reads an environment variable: the environment Run was
	// given, then the process's.
	Getenv func(string) string
	// Log is the sink's logger (discarding while the config is
	// validated).
	Log  *slog.Logger
	node *yaml.Node
}

// Decode decodes the block (without its type key) into v, a pointer to
// a struct with yaml tags. Like the rest of the config it is strict: an
// unknown key is an error naming its path and the keys the type takes.
// Every problem is returned at once, each starting with its path.
func (b Block) Decode(v any) error {
	if b.node == nil {
		return nil
	}
	var errs []error
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer {
		return fmt.Errorf("%s: Decode needs a pointer, got %T", b.Path, v)
	}
	checkKnown(b.node, t.Elem(), b.Path, "type", &errs)
	if err := b.node.Decode(v); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				errs = append(errs, fmt.Errorf("%s: %s", b.Path, strings.TrimPrefix(e, "yaml: ")))
			}
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", b.Path, err))
		}
	}
	return errors.Join(errs...)
}

// report turns a factory's error into config errors: each error of a
// join on its own, prefixed with the block's path unless it starts with
// it.
func (b Block) report(err error) []error {
	var out []error
	for _, e := range flatten(err) {
		if strings.HasPrefix(e.Error(), b.Path) {
			out = append(out, e)
		} else {
			out = append(out, fmt.Errorf("%s: %w", b.Path, e))
		}
	}
	return out
}

// flatten splits an errors.Join (and joins of joins) into its errors;
// other errors, fmt.Errorf's with several %w included, stay whole.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	errs := j.Unwrap()
	texts := make([]string, len(errs))
	for i, e := range errs {
		texts[i] = e.Error()
	}
	if strings.Join(texts, "\n") != err.Error() { // not a join: keep its own text
		return []error{err}
	}
	var out []error
	for _, e := range errs {
		out = append(out, flatten(e)...)
	}
	return out
}

var (
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// checkKnown reports the keys of n that t has no field for, with their
// paths (yaml.v3's Node.Decode, unlike its Decoder, cannot be made
// strict). skip is a key allowed at the top. Types with their own
// unmarshaler, interfaces and inline maps take any key.
func checkKnown(n *yaml.Node, t reflect.Type, path, skip string, errs *[]error) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Implements(yamlUnmarshaler) || reflect.PointerTo(t).Implements(yamlUnmarshaler) {
		// A list that unmarshals itself is taken to accept one item or a
		// list of them (httpconn.Steps); anything else is opaque.
		if t.Kind() != reflect.Slice {
			return
		}
		if n.Kind == yaml.MappingNode {
			checkKnown(n, t.Elem(), path, "", errs)
			return
		}
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) || t.Kind() == reflect.Interface {
		return
	}
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := map[string]reflect.Type{}
		anyKey := structFields(t, fields)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if k == skip || k == "<<" {
				continue
			}
			ft, ok := fields[k]
			if !ok {
				if !anyKey {
					keys := make([]string, 0, len(fields))
					for f := range fields {
						keys = append(keys, f)
					}
					sort.Strings(keys)
					*errs = append(*errs, fmt.Errorf("%s.%s: unknown key (line %d): use one of %s", path, k, n.Content[i].Line, strings.Join(keys, ", ")))
				}
				continue
			}
			checkKnown(n.Content[i+1], ft, path+"."+k, "", errs)
		}
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkKnown(n.Content[i+1], t.Elem(), path+"."+n.Content[i].Value, "", errs)
		}
	case n.Kind == yaml.SequenceNode && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
		for i, c := range n.Content {
			checkKnown(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), "", errs)
		}
	}
}

// structFields collects t's YAML keys (yaml.v3's rules: the tag's name,
// else the lowercased field name; ",inline" structs merged); true when
// an inline map takes any other key.
func structFields(t reflect.Type, into map[string]reflect.Type) (anyKey bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if tag == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch ft.Kind() {
			case reflect.Struct:
				anyKey = structFields(ft, into) || anyKey
			case reflect.Map:
				anyKey = true
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		into[name] = f.Type
	}
	return anyKey
}

// build builds integration i's connector with its type's factory, and
// returns its problems as config errors.
func (r registry) build(i int, in Integration, getenv func(string) string, log *slog.Logger) (connector.Connector, []error) {
	path := fmt.Sprintf("integrations[%d].connector", i)
	f := r[in.Connector.Type]
	if f == nil {
		what := fmt.Sprintf("%q", in.Connector.Type)
		if in.Connector.Type == "" {
			what = "required"
		}
		return nil, []error{fmt.Errorf("%s.type: %s: use %s", path, what, r.names())}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := Block{Integration: in.Name, Path: path, node: in.Connector.node, Log: log, Getenv: func(k string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return os.Getenv(k)
	}}
	c, err := f(b)
	if err != nil {
		return nil, b.report(err)
	}
	if c == nil {
		return nil, []error{fmt.Errorf("%s: connector type %q built no connector (its factory returned nil, nil)", path, in.Connector.Type)}
	}
	return c, nil
}

// httpFactory builds the declarative HTTP connector (pkg/connector/httpconn:
// its fields are the block's keys).
func httpFactory(b Block) (connector.Connector, error) {
	var cfg httpconn.Config
	if err := b.Decode(&cfg); err != nil {
		return nil, err
	}
	return httpconn.New(cfg, b.Path)
}

// webhookBlock is the webhook connector's block.
type webhookBlock struct {
	URL string `yaml:"url"`
	// URLEnv names the environment variable holding the webhook's URL
	// (when it carries a token).
	URLEnv  string        `yaml:"url_env"`
	Timeout time.Duration `yaml:"timeout"`
	// SigningSecretsEnv names environment variables holding Standard
	// Webhooks secrets (whsec_…): requests are signed with each (several
	// during a rotation). Empty: unsigned.
	SigningSecretsEnv []string `yaml:"signing_secrets_env"`
}

// webhookFactory builds the webhook connector: POST every event to url.
func webhookFactory(b Block) (connector.Connector, error) {
	var blk webhookBlock
	if err := b.Decode(&blk); err != nil {
		return nil, err
	}
	var errs []error
	cfg := webhook.Config{URL: blk.URL, URLEnv: blk.URLEnv, Timeout: blk.Timeout}
	for j, name := range blk.SigningSecretsEnv {
		if name == "" {
			errs = append(errs, fmt.Errorf("%s.signing_secrets_env[%d]: empty: name an environment variable", b.Path, j))
			continue
		}
		v := b.Getenv(name)
		if v == "" {
			errs = append(errs, fmt.Errorf("%s.signing_secrets_env[%d]: environment variable %s is not set", b.Path, j, name))
		}
		cfg.SigningSecrets = append(cfg.SigningSecrets, v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c, err := webhook.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s.%w", b.Path, err) // webhook's errors start with the key
	}
	return c, nil
}
