//go:build !containers

package kafkatest

import (
	"context"
	"errors"
)

func startContainer(context.Context) ([]string, error) {
	return nil, errors.New("FERRY_TEST_BACKEND=containers needs the containers build tag: run `make test-containers` on a machine with a Docker engine")
}
