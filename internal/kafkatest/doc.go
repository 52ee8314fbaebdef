// Package kafkatest gives tests a real Kafka-protocol broker reached over
// TCP: by default an in-process franz-go kfake cluster on 127.0.0.1 (fresh
// per test), or — with FERRY_TEST_BACKEND=containers and -tags
// containers — one apache/kafka container in KRaft mode shared by the
// package, with a unique topic prefix per test. It also has helpers to read
// topics back. Functions are safe for concurrent use.
package kafkatest
