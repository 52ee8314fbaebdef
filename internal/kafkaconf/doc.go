// Package kafkaconf owns the Kafka client settings every Ferry process
// shares: the seed brokers, TLS and SASL. cdc's producer, the sink's
// consumers, the sink's status and ops commands (kadm) and the backfill
// all build their franz-go clients from one [Config] with [Config.Opts],
// so a cluster that needs TLS or credentials (Confluent Cloud, Amazon MSK,
// Aiven, Redpanda Cloud, any cluster with authentication) is reachable
// from every client with the same keys under kafka.tls and kafka.sasl and
// the same FERRY_KAFKA_* environment variables in both binaries.
//
// Rejected credentials are not weather (design.md, guarantee 7): no retry
// can fix them. [Config.Ping] and [Config.Explain] return such failures
// marked [retry.Permanent], naming SASL and the mechanism, so reconnect
// loops exit non-zero instead of retrying. A broker that answers
// SASL_AUTHENTICATION_FAILED is recognised by its error code; one that
// just closes the connection (kfake, some proxies) is recognised by a
// short probe that watches the SASL exchange with a client hook.
//
// The password is a [Secret]: it prints REDACTED in logs, errors and
// dumps.
//
// A Config is a value; its methods are safe for concurrent use.
package kafkaconf
