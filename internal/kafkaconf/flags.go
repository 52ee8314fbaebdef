package kafkaconf

// PasswordEnv is the environment variable that holds the SASL password.
// The password has no flag: a flag's value shows in ps and shell history.
const PasswordEnv = "FERRY_KAFKA_SASL_PASSWORD"

// Flags are the command-line flags of these settings, each also read from
// its FERRY_KAFKA_* environment variable (the same in cdc and sink). Embed
// them in a kong flags struct (`embed:""`) and call Apply after parsing.
// Pointer fields stay nil unless given, so the config file's values
// survive.
type Flags struct {
	Brokers            []string `help:"Kafka seed brokers, comma-separated host:port." env:"FERRY_KAFKA_BROKERS" sep:","`
	TLS                *bool    `help:"Connect to Kafka over TLS: true or false (default false)." env:"FERRY_KAFKA_TLS" name:"kafka-tls"`
	TLSCAFile          *string  `help:"PEM file of the CAs that sign the brokers' certificates (default: the system's roots)." env:"FERRY_KAFKA_TLS_CA_FILE" name:"kafka-tls-ca-file" placeholder:"FILE"`
	TLSCertFile        *string  `help:"PEM client certificate, for brokers that require mutual TLS (with --kafka-tls-key-file)." env:"FERRY_KAFKA_TLS_CERT_FILE" name:"kafka-tls-cert-file" placeholder:"FILE"`
	TLSKeyFile         *string  `help:"PEM key of the client certificate." env:"FERRY_KAFKA_TLS_KEY_FILE" name:"kafka-tls-key-file" placeholder:"FILE"`
	TLSServerName      *string  `help:"Name to check in the brokers' certificates (default: each broker's host)." env:"FERRY_KAFKA_TLS_SERVER_NAME" name:"kafka-tls-server-name" placeholder:"NAME"`
	SASLMechanism      *string  `help:"Kafka SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM (default: no SASL)." env:"FERRY_KAFKA_SASL_MECHANISM" name:"kafka-sasl-mechanism" placeholder:"MECHANISM"`
	SASLUsername       *string  `help:"Kafka SASL username. The password comes from FERRY_KAFKA_SASL_PASSWORD or kafka.sasl.password in the config file, never a flag." env:"FERRY_KAFKA_SASL_USERNAME" name:"kafka-sasl-username" placeholder:"USER"`
	SASLAllowPlaintext *bool    `help:"Allow PLAIN or OAUTHBEARER without TLS, sending the credentials readable on the network (default false: refused)." env:"FERRY_KAFKA_SASL_ALLOW_PLAINTEXT" name:"kafka-sasl-allow-plaintext"`
}

// Apply overrides cfg with the flags that were given, and the password
// with getenv(PasswordEnv) when it is set.
func (f Flags) Apply(cfg *Config, getenv func(string) string) {
	if len(f.Brokers) > 0 {
		cfg.Brokers = f.Brokers
	}
	str := func(dst *string, v *string) {
		if v != nil && *v != "" {
			*dst = *v
		}
	}
	if f.TLS != nil {
		cfg.TLS.Enabled = *f.TLS
	}
	str(&cfg.TLS.CAFile, f.TLSCAFile)
	str(&cfg.TLS.CertFile, f.TLSCertFile)
	str(&cfg.TLS.KeyFile, f.TLSKeyFile)
	str(&cfg.TLS.ServerName, f.TLSServerName)
	str(&cfg.SASL.Mechanism, f.SASLMechanism)
	str(&cfg.SASL.Username, f.SASLUsername)
	if f.SASLAllowPlaintext != nil {
		cfg.SASL.AllowPlaintext = *f.SASLAllowPlaintext
	}
	if p := getenv(PasswordEnv); p != "" {
		cfg.SASL.Password = Secret(p)
	}
}
