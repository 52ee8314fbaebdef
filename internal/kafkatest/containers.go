//go:build containers

package kafkatest

import (
	"context"
	"fmt"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// startContainer runs apache/kafka in KRaft mode with one broker whose
// advertised listener is the mapped host port. testcontainers' kafka
// module does not build against core v0.45, so this uses GenericContainer.
func startContainer(ctx context.Context) ([]string, error) {
	const port = "9092/tcp"
	req := testcontainers.ContainerRequest{
		Image:        "apache/kafka:3.9.1",
		ExposedPorts: []string{port},
		Env: map[string]string{
			"KAFKA_NODE_ID":                                  "1",
			"KAFKA_PROCESS_ROLES":                            "broker,controller",
			"KAFKA_LISTENERS":                                "PLAINTEXT://:9092,CONTROLLER://:9093",
			"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
			"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@localhost:9093",
			"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
			"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
			"KAFKA_NUM_PARTITIONS":                           "4",
			"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "true",
		},
		// The advertised listener must name the host port Docker maps,
		// known only after start: the broker waits for it in a file.
		Entrypoint: []string{"sh", "-c", "while [ ! -f /tmp/advertised ]; do sleep 0.1; done; export KAFKA_ADVERTISED_LISTENERS=$(cat /tmp/advertised); exec /etc/kafka/docker/run"},
	}
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
	if err != nil {
		return nil, fmt.Errorf("kafkatest: start kafka container (is a Docker engine running?): %w", err)
	}
	host, err := c.Host(ctx)
	if err != nil {
		return nil, err
	}
	mapped, err := c.MappedPort(ctx, port)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("%s:%s", host, mapped.Port())
	if err := c.CopyToContainer(ctx, []byte("PLAINTEXT://"+addr), "/tmp/advertised", 0o644); err != nil {
		return nil, fmt.Errorf("kafkatest: set advertised listener: %w", err)
	}
	if err := wait.ForLog("Kafka Server started").WaitUntilReady(ctx, c); err != nil {
		return nil, fmt.Errorf("kafkatest: kafka did not start: %w", err)
	}
	return []string{addr}, nil
}
