package connectortest

import (
	"context"
	"sync"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// MemMappings is an in-memory connector.Mappings for connector tests
// (the sink uses pkg/mapping's Postgres store). Safe for concurrent use.
type MemMappings struct {
	mu sync.Mutex
	m  map[[2]string]connector.Mapping
}

// NewMemMappings returns an empty store.
func NewMemMappings() *MemMappings { return &MemMappings{m: map[[2]string]connector.Mapping{}} }

// Get implements connector.Mappings.
func (s *MemMappings) Get(_ context.Context, entityType, localID string) (connector.Mapping, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.m[[2]string{entityType, localID}]
	if !ok {
		return connector.Mapping{}, connector.ErrNoMapping
	}
	return m, nil
}

// Fresh implements connector.Mappings (there is no cache here).
func (s *MemMappings) Fresh(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	return s.Get(ctx, entityType, localID)
}

// Intend implements connector.Mappings.
func (s *MemMappings) Intend(_ context.Context, entityType, localID, key string) (connector.Mapping, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{entityType, localID}
	m, ok := s.m[k]
	if !ok || m.State == "deleted" {
		m = connector.Mapping{EntityType: entityType, LocalID: localID, State: "creating", IdempotencyKey: key}
		s.m[k] = m
	}
	return m, nil
}

// Activate implements connector.Mappings.
func (s *MemMappings) Activate(_ context.Context, entityType, localID, remoteID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{entityType, localID}
	m := s.m[k]
	m.EntityType, m.LocalID, m.RemoteID, m.State = entityType, localID, remoteID, "active"
	s.m[k] = m
	return nil
}

// MarkDeleting implements connector.Mappings.
func (s *MemMappings) MarkDeleting(_ context.Context, entityType, localID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{entityType, localID}
	if m, ok := s.m[k]; ok && m.State == "active" {
		m.State = "deleting"
		s.m[k] = m
	}
	return nil
}

// MarkDeleted implements connector.Mappings.
func (s *MemMappings) MarkDeleted(_ context.Context, entityType, localID string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{entityType, localID}
	m, ok := s.m[k]
	if !ok || m.State == "deleted" {
		return false, nil
	}
	m.State = "deleted"
	s.m[k] = m
	return true, nil
}

// All returns every mapping, in no particular order.
func (s *MemMappings) All() []connector.Mapping {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]connector.Mapping, 0, len(s.m))
	for _, m := range s.m {
		out = append(out, m)
	}
	return out
}
