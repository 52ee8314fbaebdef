package consume

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

// RollbackResult says what a rollback did.
type RollbackResult struct {
	Deleted int      `json:"deleted"` // partner objects deleted (or already gone)
	Skipped int      `json:"skipped"` // mappings the connector has no entity for (deleted with their owner)
	Failed  []string `json:"failed"`  // "entity/local id: reason"
}

// Rollback deletes at the partner every object the mappings hold for a
// tenant of an integration, newest first (children before parents), and
// marks the mappings deleted. Each delete is a delivery in the log
// (event id "rollback:<entity>:<local id>:<time>"), so it can be
// inspected like any other. Objects that could not be deleted are
// listed; running the rollback again retries them.
func Rollback(ctx context.Context, integration, tenant string, conn connector.Connector, dlog *delivery.Log, maps *mapping.Store, timeout time.Duration) (RollbackResult, error) {
	var res RollbackResult
	ms, err := maps.ForTenant(ctx, integration, tenant)
	if err != nil {
		return res, err
	}
	handles, _ := conn.(interface{ Handles(entityType string) bool })
	stamp := time.Now().UTC().Format("20060102T150405.000000000")
	for _, m := range ms {
		if handles != nil && !handles.Handles(m.EntityType) {
			res.Skipped++
			continue
		}
		ev := connector.Event{ID: fmt.Sprintf("rollback:%s:%s:%s", m.EntityType, m.LocalID, stamp), TenantID: tenant,
			EventType: m.EntityType + ".rollback", AggregateType: m.EntityType, AggregateID: m.LocalID, Payload: []byte(`{}`)}
		att, err := dlog.Begin(ctx, integration, ev, delivery.Source{Partition: -1, Offset: -1})
		if err != nil {
			return res, err
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		r, derr := conn.Deliver(cctx, connector.Request{Integration: integration, Event: ev, Delete: true,
			Mappings: maps.For(integration, tenant), IdempotencyKey: integration + ":" + ev.ID, Attempt: att.Number})
		cancel()
		o := delivery.OutcomeOf(r, derr)
		o.Reason = "rollback of a disabled tenant"
		if derr != nil {
			o.Reason += ": " + derr.Error()
			res.Failed = append(res.Failed, fmt.Sprintf("%s/%s: %v", m.EntityType, m.LocalID, derr))
		} else {
			res.Deleted++
		}
		// The partner answered: record it even if the caller gave up.
		if err := dlog.Finish(context.WithoutCancel(ctx), att, o); err != nil {
			return res, err
		}
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("rollback of %s/%s: %d object(s) could not be deleted at the partner (see `sink failures --tenant %s`); run the disable again to retry them",
			integration, tenant, len(res.Failed), tenant)
	}
	return res, nil
}
