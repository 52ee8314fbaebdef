//go:build !containers

package pgtest

import (
	"context"
	"errors"
)

func startContainer(context.Context) (string, func() error, error) {
	return "", nil, errors.New("FERRY_TEST_BACKEND=containers needs the containers build tag: run `make test-containers` (go test -tags containers ./...) on a machine with a Docker engine")
}
