package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-cdc/ferry/internal/lsnack"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/retry"
)

// CaughtUpBytes is the slot lag below which cdc counts as caught up:
// heartbeats and keepalives always leave a little WAL behind.
const CaughtUpBytes = 64 << 10

// HeartbeatPrefix is the logical message prefix of cdc's heartbeats. The
// content is "<slot>:<sequence>".
const HeartbeatPrefix = "ferry.heartbeat"

// Handler receives committed transactions whole (backfill).
type Handler interface {
	// HandleTx is called on the reader's goroutine once per committed
	// transaction, in commit order. It starts publishing and returns; it
	// blocks only for back-pressure. It must call ack exactly once, from
	// any goroutine: nil once every record is acknowledged by Kafka, or the
	// error that stopped publishing (the reader then stops without
	// confirming tx). A returned error stops the reader too.
	HandleTx(ctx context.Context, tx *Tx, ack func(error)) error
}

// Publisher opens publishing sessions. The reader opens one per
// replication session (after every reconnect), so records of a session
// that ended can never be written after records of the next one.
type Publisher interface {
	// Open starts a session. It fails when Kafka cannot be reached; the
	// reader then retries with backoff.
	Open(ctx context.Context) (Session, error)
}

// Session publishes one replication session's transactions, in commit
// order. Once any record of a session has failed, no record handed to it
// later may be written to Kafka: the reader resends from the slot's
// confirmed position, and a later record written after a failed earlier
// one would overtake the resent one.
//
// The reader streams each transaction as it is received (Begin, Publish
// per event, Commit), so a transaction of any size never sits whole in
// memory; HandleTx publishes a whole one (backfill). All of these are
// called from one goroutine, one transaction at a time.
type Session interface {
	Handler
	// Begin starts a transaction received from the slot: tx carries its
	// header (Xid, CommitLSN, CommitLSNText, CommitTime; no Events). ack
	// is called exactly once, from any goroutine: nil once Commit was
	// called and Kafka acknowledged every record of the transaction, or
	// the error that stopped publishing, possibly before Commit (the
	// reader then stops without confirming the transaction).
	Begin(tx *Tx, ack func(error))
	// Publish starts publishing one event of the transaction begun, in
	// the order received. It blocks only for back-pressure (records or
	// bytes in flight); a returned error (ctx ended that wait) stops the
	// reader.
	Publish(ctx context.Context, e *Event) error
	// Commit says the transaction begun has no more events.
	Commit()
	// Close ends the session: nothing more is produced, records not yet
	// written fail, a transaction begun and not committed fails, and
	// Close returns once every ack has been called. It is called after
	// the last of the calls above has returned.
	Close()
}

// Reader streams the outbox into Kafka through a Publisher, reconnecting
// after Postgres or Kafka went away.
type Reader struct {
	cfg Config
	url string
	pub Publisher
	log *slog.Logger
	m   *metrics.CDC

	leader    atomic.Bool
	connected atomic.Bool // holds its connections (false while reconnecting)
	streaming atomic.Bool
	hbMu      sync.Mutex
	hbSent    map[uint64]time.Time // heartbeats written and not yet seen
	hbSeen    time.Time
	hbStuck   atomic.Bool
	hbSeq     uint64 // last heartbeat written; monitor's, one session at a time, so sequences never repeat across reconnects
	confirmed atomic.Uint64
}

// NewReader returns a reader. cfg must have defaults set and be valid.
func NewReader(cfg Config, url string, pub Publisher, log *slog.Logger, m *metrics.CDC) *Reader {
	r := &Reader{cfg: cfg, url: url, pub: pub, log: log, m: m, hbSent: map[uint64]time.Time{}}
	r.connected.Store(true) // until the first attempt fails
	return r
}

// Ready reports whether the reader holds the slot and is streaming, and
// its heartbeats come back.
func (r *Reader) Ready() bool { return r.streaming.Load() && !r.hbStuck.Load() }

// Connected reports whether the reader holds its connections: false
// from a failed attempt until the next one succeeds.
func (r *Reader) Connected() bool { return r.connected.Load() }

// kafkaError marks an error as Kafka's side of a session (for the
// reconnects metric); Permanent marks inside it still count.
type kafkaError struct{ err error }

func (k *kafkaError) Error() string { return k.err.Error() }
func (k *kafkaError) Unwrap() error { return k.err }

// what names the side that failed: "kafka" or "postgres".
func what(err error) string {
	var k *kafkaError
	if errors.As(err, &k) {
		return "kafka"
	}
	return "postgres"
}

// Leader reports whether this process holds the slot.
func (r *Reader) Leader() bool { return r.leader.Load() }

// Confirmed returns the position last confirmed to the slot.
func (r *Reader) Confirmed() pglogrepl.LSN { return pglogrepl.LSN(r.confirmed.Load()) }

// Run waits to hold the slot (as a standby while another cdc holds it),
// runs the slot guard, recovers if asked, and streams until ctx ends or
// an error that no reconnect can fix (retry.Permanent: a slot-guard
// refusal, a bad event under on_bad_event stop, rejected Kafka
// credentials) stops it. Any other failure (Postgres restarted or failed
// over, a dropped connection, Kafka unreachable, a failed record) ends the
// session: its records are aborted, and after a capped, jittered backoff
// a new session takes the slot lock again (or waits as standby if another
// cdc took over) and resends from the slot's confirmed position. It
// returns nil when ctx ends, and only after its goroutines have ended.
func (r *Reader) Run(ctx context.Context) error {
	rc := retry.Reconnect{
		What:    "replication (postgres or kafka)",
		Policy:  retry.Policy{Initial: 200 * time.Millisecond, Max: r.cfg.ReconnectMax},
		Log:     r.log.With("slot", r.cfg.Slot),
		OnRetry: func(err error) { r.m.Reconnects.WithLabelValues(what(err)).Inc() },
		OnState: func(up bool) { r.connected.Store(up) },
	}
	return rc.Run(ctx, r.session)
}

// session is one replication session: from connecting to the first
// error. up is called once it streams.
func (r *Reader) session(ctx context.Context, up func()) error {
	lockConn, err := pgx.Connect(ctx, r.url)
	if err != nil {
		return pgdb.Explain("postgres", r.url, err)
	}
	defer lockConn.Close(context.WithoutCancel(ctx))
	if err := r.waitLeader(ctx, lockConn, up); err != nil || ctx.Err() != nil {
		return err
	}
	r.leader.Store(true)
	r.m.Leader.Set(1)
	defer func() { r.leader.Store(false); r.m.Leader.Set(0) }()

	st, err := prepare(ctx, lockConn, r.cfg)
	if err != nil {
		return err
	}
	sess, err := r.pub.Open(ctx)
	if err != nil {
		return &kafkaError{err}
	}
	// Deferred after the goroutines below have ended (g.Wait), and before
	// the next session opens its own.
	defer sess.Close()
	if st.recoverSince != nil {
		r.log.Warn("recovering lost slot: backfilling rows", "slot", r.cfg.Slot, "since", st.recoverSince.UTC().Format(time.RFC3339))
		n, err := Backfill(ctx, lockConn, r.cfg, BackfillFilter{Since: *st.recoverSince}, sess)
		if err != nil {
			return fmt.Errorf("recover lost slot: backfill: %w", err)
		}
		if err := adoptSlot(ctx, lockConn, r.cfg, st.start); err != nil {
			return err
		}
		r.log.Warn("recovered lost slot", "slot", r.cfg.Slot, "backfilled", n, "lsn", st.start.String())
	}
	r.confirmed.Store(uint64(st.start))
	r.m.ConfirmedLSN.Set(float64(st.start))

	repl, err := r.startReplication(ctx, st.start)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	r.log.Info("streaming outbox", "slot", r.cfg.Slot, "lsn", st.start.String(), "table", r.cfg.Table)

	pool, err := pgx.Connect(ctx, r.url) // heartbeat and lag queries
	if err != nil {
		return pgdb.Explain("postgres", r.url, err)
	}
	defer pool.Close(context.WithoutCancel(ctx))
	up()

	g, gctx := errgroup.WithContext(ctx)
	tracker := lsnack.New(st.start)
	g.Go(func() error { return r.stream(gctx, repl, lockConn, tracker, sess) })
	g.Go(func() error { return r.monitor(gctx, pool, tracker) })
	err = g.Wait()
	r.streaming.Store(false)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// waitLeader takes the slot's advisory lock, waiting as a standby while
// another cdc holds it (a standby is connected: it calls up). The lock
// lives as long as conn: after a Postgres restart the next session takes
// it again, or waits if another cdc took it meanwhile.
func (r *Reader) waitLeader(ctx context.Context, conn *pgx.Conn, up func()) error {
	logged := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('ferry.cdc/' || $1))`, r.cfg.Slot).Scan(&ok); err != nil {
			return fmt.Errorf("take the slot lock: %w", err)
		}
		if ok {
			if logged {
				r.log.Info("took over the slot", "slot", r.cfg.Slot)
			}
			return nil
		}
		if !logged {
			r.log.Info("another cdc holds the slot; waiting as standby", "slot", r.cfg.Slot)
			logged = true
			up()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.StandbyPoll):
		}
	}
}

// startReplication starts streaming at start. Postgres starts at the
// slot's confirmed position when start is behind it, and skips
// transactions that committed before start when it is ahead (see
// prepare: start may be cdc's own record of what Kafka acknowledged).
func (r *Reader) startReplication(ctx context.Context, start pglogrepl.LSN) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(r.url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", r.cfg.Publication), "messages 'true'"}
	wait := 100 * time.Millisecond
	for {
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return nil, pgdb.Explain("replication", r.url, err)
		}
		err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args})
		if err == nil {
			return conn, nil
		}
		conn.Close(context.WithoutCancel(ctx))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: the old holder's walsender is still exiting
			return nil, fmt.Errorf("start replication on slot %s: %w", r.cfg.Slot, err)
		}
		r.log.Info("slot still active, retrying", "slot", r.cfg.Slot, "reason", pgErr.Message)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

// stream is the replication loop. It owns repl and lockConn, and is the
// only caller of sess.Begin, Publish and Commit.
func (r *Reader) stream(ctx context.Context, repl *pgconn.PgConn, lockConn *pgx.Conn, tracker *lsnack.Tracker, sess Session) error {
	dec := NewDecoder(r.cfg.Table, r.cfg.Columns, r.cfg.MessagePrefix)
	win := newWindows(r.log, r.m, tracker)
	defer r.m.ResyncWindows.Set(0)
	var (
		serverEnd  pglogrepl.LSN   // last keepalive position
		cur        *lsnack.Pending // the transaction being received
		lastSent   = r.Confirmed()
		nextStatus = time.Now().Add(r.cfg.StatusInterval)
	)
	r.streaming.Store(true)

	sendStatus := func(ctx context.Context) error {
		acked, ackedAt, inFlight := tracker.Acked()
		r.m.InFlight.Set(float64(inFlight))
		if inFlight == 0 && !dec.InTx() && serverEnd > acked && tracker.Advance(serverEnd) {
			acked = serverEnd
		}
		if acked > lastSent {
			// Record first: the slot must never be ahead of the record.
			_, err := lockConn.Exec(ctx, `UPDATE ferry.cdc_slot SET confirmed_lsn = $2,
				confirmed_commit_time = COALESCE($3, confirmed_commit_time), updated_at = now() WHERE slot_name = $1`,
				r.cfg.Slot, acked, nullTime(ackedAt))
			if err != nil {
				return fmt.Errorf("record confirmed position: %w", err)
			}
		}
		// The flush position is set explicitly: pglogrepl would copy the
		// write position into a zero flush position.
		err := pglogrepl.SendStandbyStatusUpdate(ctx, repl, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: acked, WALFlushPosition: acked, WALApplyPosition: acked, ClientTime: time.Now()})
		if err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		if acked > lastSent {
			lastSent = acked
			r.confirmed.Store(uint64(acked))
			r.m.ConfirmedLSN.Set(float64(acked))
		}
		return nil
	}

	// Receives wait at most until a read deadline set on the connection
	// itself, at most 100 ms away, so shutdown is noticed quickly, and
	// use no context: pgconn closes the connection when a receive is
	// cancelled, which would make the final status update impossible,
	// and watching a context per message (as a deadline context would)
	// cost 8% of cdc's CPU. A timeout leaves the connection usable.
	base := context.WithoutCancel(ctx)
	var rdeadline time.Time // set on the connection; zero: none yet
	// Shutting down inside a transaction, the loop reads on for up to
	// shutdownGrace (under lctx, not the cancelled ctx) to reach its
	// Commit: its records are published as they are decoded, so all of
	// them may be acknowledged already, with only the Commit unread.
	graceCtx, graceEnd := context.WithCancel(base)
	defer graceEnd()
	lctx := ctx
	for {
		if err := tracker.Err(); err != nil {
			return &kafkaError{err}
		}
		if ctx.Err() != nil && lctx == ctx {
			lctx = graceCtx
			time.AfterFunc(shutdownGrace, graceEnd)
		}
		if ctx.Err() != nil && (!dec.InTx() || lctx.Err() != nil) {
			// Shutting down: confirm what Kafka has acknowledged, under a
			// fresh timeout, so the next holder resends less. Records
			// already sent are answered within moments: wait for them
			// (at most shutdownGrace), unless a transaction was cut.
			for wait := time.Now().Add(shutdownGrace); !dec.InTx() && tracker.Err() == nil && time.Now().Before(wait); time.Sleep(5 * time.Millisecond) {
				if _, _, inFlight := tracker.Acked(); inFlight == 0 {
					break
				}
			}
			fctx, fcancel := context.WithTimeout(base, 5*time.Second)
			err := sendStatus(fctx)
			fcancel()
			if err != nil {
				r.log.Warn("final status update failed; the next start resends from the last confirmed position", "reason", err.Error())
			}
			return ctx.Err()
		}
		now := time.Now()
		if !now.Before(nextStatus) {
			if err := sendStatus(lctx); err != nil {
				return err
			}
			nextStatus = now.Add(r.cfg.StatusInterval)
			rdeadline = time.Time{} // a write cancelled by its context clears the connection's deadlines: set it again
		}
		if !now.Before(rdeadline) {
			rdeadline = now.Add(100 * time.Millisecond)
			if nextStatus.Before(rdeadline) {
				rdeadline = nextStatus
			}
			if err := repl.Conn().SetReadDeadline(rdeadline); err != nil {
				return fmt.Errorf("replication stream: set read deadline: %w", err)
			}
		}
		raw, err := repl.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("replication stream: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("replication stream: keepalive: %w", err)
				}
				serverEnd = max(serverEnd, pkm.ServerWALEnd)
				if pkm.ReplyRequested {
					nextStatus = time.Now()
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("replication stream: XLogData: %w", err)
				}
				if err := r.handle(lctx, dec, tracker, win, &cur, xld, sess); err != nil {
					return err
				}
			}
		}
	}
}

// handle decodes one XLogData message and hands what it carries to the
// session as it comes: a transaction's events are published while it is
// received, and it is added to the tracker at its Begin (so a record
// that fails before its Commit arrives stops the stream) and given its
// end LSN at its Commit; the watermark passes it only after that and
// after Kafka acknowledged every one of its records.
func (r *Reader) handle(ctx context.Context, dec *Decoder, tracker *lsnack.Tracker, win *windows, cur **lsnack.Pending, xld pglogrepl.XLogData, sess Session) error {
	st, err := dec.DecodeWAL(xld.WALData)
	if err != nil {
		return fmt.Errorf("replication stream at %s: %w", xld.WALStart, err)
	}
	switch {
	case st.Event != nil:
		if !win.event(st.Event) {
			return nil
		}
		if err := sess.Publish(ctx, st.Event); err != nil {
			return fmt.Errorf("publish event of the transaction at %s: %w", dec.tx.CommitLSN, err)
		}
	case st.Begin != nil:
		p := tracker.Add(0, st.Begin.CommitTime)
		*cur = p
		commit := st.Begin.CommitTime
		sess.Begin(st.Begin, func(err error) {
			tracker.Done(p, err)
			if err == nil {
				r.m.Transactions.Inc()
				r.m.CommitToAck.Observe(time.Since(commit).Seconds())
			}
		})
	case st.Commit != nil:
		tracker.End(*cur, st.Commit.EndLSN)
		win.commit(*cur)
		*cur = nil
		sess.Commit()
	case st.Message != nil:
		switch st.Message.Prefix {
		case HeartbeatPrefix:
			r.heartbeatSeen(st.Message)
		case WatermarkPrefix:
			win.message(st.Message)
		}
	}
	return nil
}

// shutdownGrace bounds how long a reader told to stop inside a
// transaction reads on to reach its Commit.
const shutdownGrace = time.Second

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// monitor writes heartbeats, checks they come back, and samples slot lag.
func (r *Reader) monitor(ctx context.Context, conn *pgx.Conn, tracker *lsnack.Tracker) error {
	hb := r.cfg.HeartbeatInterval
	tick := 5 * time.Second
	if hb > 0 && hb < tick {
		tick = hb
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastHB time.Time
	warned := false
	for {
		if hb > 0 && time.Since(lastHB) >= hb {
			if err := r.checkHeartbeats(hb); err != nil {
				r.log.Error("heartbeat not received", "slot", r.cfg.Slot, "reason", err.Error())
			}
			r.hbSeq++
			seq := r.hbSeq
			r.hbMu.Lock()
			r.hbSent[seq] = time.Now()
			r.hbMu.Unlock()
			if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, HeartbeatPrefix, r.cfg.Slot+":"+strconv.FormatUint(seq, 10)); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("write heartbeat (the role needs EXECUTE on pg_logical_emit_message; or set heartbeat_interval negative): %w", err)
			}
			lastHB = time.Now()
		}
		var lag int64
		var walStatus string
		var safe int64
		err := conn.QueryRow(ctx, `SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
			COALESCE(wal_status, ''), COALESCE(safe_wal_size, -1) FROM pg_replication_slots WHERE slot_name = $1`, r.cfg.Slot).Scan(&lag, &walStatus, &safe)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, pgx.ErrNoRows):
			return retry.Permanent(fmt.Errorf("%w: replication slot %s was dropped while cdc was streaming", ErrSlotLost, r.cfg.Slot))
		case err != nil:
			return fmt.Errorf("read slot lag: %w", err)
		}
		if walStatus == "lost" {
			return retry.Permanent(fmt.Errorf("%w: replication slot %s was invalidated (max_slot_wal_keep_size exceeded)", ErrSlotLost, r.cfg.Slot))
		}
		r.m.SlotLagBytes.Set(float64(lag))
		r.m.SlotSafeWALSize.Set(float64(safe))
		_, ackedAt, inFlight := tracker.Acked()
		if lag > 0 && (inFlight > 0 || lag > CaughtUpBytes) && !ackedAt.IsZero() {
			r.m.SlotLagSeconds.Set(time.Since(ackedAt).Seconds())
		} else {
			r.m.SlotLagSeconds.Set(0)
		}
		if safe >= 0 && safe < r.cfg.WALWarnBytes {
			if !warned {
				r.log.Warn("slot close to invalidation by max_slot_wal_keep_size", "slot", r.cfg.Slot, "safe_wal_size", safe)
				warned = true
			}
		} else {
			warned = false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (r *Reader) heartbeatSeen(lm *pglogrepl.LogicalDecodingMessage) {
	slot, seqText, ok := strings.Cut(string(lm.Content), ":")
	if !ok || slot != r.cfg.Slot {
		return // another slot's heartbeat on the same database
	}
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil {
		return
	}
	r.hbMu.Lock()
	defer r.hbMu.Unlock()
	if _, ok := r.hbSent[seq]; !ok {
		return // not ours: written by a process before this one
	}
	for s := range r.hbSent {
		if s <= seq {
			delete(r.hbSent, s)
		}
	}
	r.hbSeen = time.Now()
	r.hbStuck.Store(false)
	r.m.HeartbeatAge.Set(0)
}

// checkHeartbeats reports a heartbeat written more than three intervals
// ago that has not come back: the stream is stuck.
func (r *Reader) checkHeartbeats(interval time.Duration) error {
	r.hbMu.Lock()
	defer r.hbMu.Unlock()
	if !r.hbSeen.IsZero() {
		r.m.HeartbeatAge.Set(time.Since(r.hbSeen).Seconds())
	}
	for seq, at := range r.hbSent {
		if time.Since(at) > 3*interval {
			r.hbStuck.Store(true)
			return fmt.Errorf("heartbeat %d written %s ago has not come back through slot %s: replication is stuck or far behind", seq, time.Since(at).Round(time.Second), r.cfg.Slot)
		}
	}
	return nil
}
