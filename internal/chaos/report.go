package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// Recovery is how long one fault took to get over: from its end (the part
// back, the error window closed, the process killed) to the first event
// committed after that end reaching Kafka and the partner.
type Recovery struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail,omitempty"`
	// KafkaRecovered and Recovered (at the partner) say whether such an
	// event arrived within the ceiling.
	KafkaRecovered bool  `json:"kafka_recovered"`
	Recovered      bool  `json:"recovered"`
	ToKafkaMS      int64 `json:"to_kafka_ms"`
	ToPartnerMS    int64 `json:"to_partner_ms"`
	// AfterLate marks a fault injected while the one before had not
	// recovered: its times are the earlier fault's too, so they are left
	// out of the percentiles.
	AfterLate bool `json:"after_late,omitempty"`
	// SlowestTenantMS is the same as ToPartnerMS for the slowest tenant:
	// when every tenant writing after the fault had an event delivered.
	SlowestTenantMS int64  `json:"slowest_tenant_ms"`
	SlowestTenant   string `json:"slowest_tenant,omitempty"`
}

// Result is one run's figures.
type Result struct {
	Run        int            `json:"run"`
	Seed       uint64         `json:"seed"`
	SyncWrites bool           `json:"sync_writes"`
	Faults     map[string]int `json:"faults"`
	// Events is the number of rows in the outbox table: committed events.
	Events             int `json:"events"`
	Transactions       int `json:"transactions"`
	FailedTransactions int `json:"failed_transactions"`
	// AckedNotInTable counts events whose COMMIT succeeded but which the
	// table does not hold (PostgreSQL lost them; expected 0).
	AckedNotInTable int `json:"acked_not_in_table"`
	// Kafka, read whole by a fresh reader after the faults.
	Records          int `json:"records"`
	Lost             int `json:"lost"`
	Reordered        int `json:"reordered"`
	DuplicateRecords int `json:"duplicate_records"`
	// BrokerLost counts lost events the live reader had seen in Kafka
	// before: the broker lost acknowledged records.
	BrokerLost int `json:"broker_lost"`
	// The partner.
	PartnerApplied   int `json:"partner_applied"`
	PartnerLost      int `json:"partner_lost"`
	PartnerReordered int `json:"partner_reordered"`
	DoubleEffects    int `json:"double_effects"`
	PartnerReplayed  int `json:"partner_replayed"`
	PartnerRefused   int `json:"partner_refused"`
	ConcurrentCalls  int `json:"concurrent_calls"`
	// Exits counts cdc and sink exits the harness did not cause.
	Exits      map[string]int `json:"exits"`
	ExitNotes  []string       `json:"exit_notes,omitempty"`
	Recoveries []Recovery     `json:"recoveries"`
	DrainMS    int64          `json:"drain_ms"`
	Seconds    float64        `json:"seconds"`
	// Examples are evidence for whatever failed.
	Examples []string `json:"examples,omitempty"`
	// Problems are checks that could not be completed.
	Problems []string `json:"problems,omitempty"`
	// Dir holds the run's logs when it failed (or -keep).
	Dir string `json:"dir,omitempty"`
}

// Failed reports whether the run broke a guarantee (or could not be
// checked).
func (r Result) Failed() bool {
	return r.Lost+r.Reordered+r.PartnerLost+r.PartnerReordered+r.DoubleEffects > 0 || len(r.Problems) > 0
}

// Line is the one-line summary printed after each run.
func (r Result) Line() string {
	verdict := "ok"
	if r.Failed() {
		verdict = "FAILED (files in " + r.Dir + ")"
	}
	var fs []string
	for _, k := range Kinds {
		if n := r.Faults[k]; n > 0 {
			fs = append(fs, fmt.Sprintf("%s×%d", k, n))
		}
	}
	return fmt.Sprintf("run %d seed %d: %s; events %d; kafka lost %d reordered %d dup %d; partner lost %d reordered %d double %d concurrent %d replayed %d; exits cdc %d sink %d; %.0fs: %s",
		r.Run, r.Seed, strings.Join(fs, " "), r.Events, r.Lost, r.Reordered, r.DuplicateRecords,
		r.PartnerLost, r.PartnerReordered, r.DoubleEffects, r.ConcurrentCalls, r.PartnerReplayed, r.Exits["cdc"], r.Exits["sink"], r.Seconds, verdict)
}

// Summary adds up runs.
type Summary struct {
	Runs    []Result
	Failed  int
	Total   Result
	Faults  map[string]int
	ByKind  map[string][]Recovery
	Pending map[string]int // faults not recovered at the partner within the ceiling, by kind
	// KafkaByKind and KafkaPending are the same at Kafka.
	KafkaByKind  map[string][]Recovery
	KafkaPending map[string]int
	// AfterLate counts faults injected before the previous one recovered.
	AfterLate int
}

// Summarize adds up results.
func Summarize(rs []Result) Summary {
	s := Summary{Runs: rs, Faults: map[string]int{}, ByKind: map[string][]Recovery{}, Pending: map[string]int{},
		KafkaByKind: map[string][]Recovery{}, KafkaPending: map[string]int{}, Total: Result{Exits: map[string]int{}}}
	t := &s.Total
	for _, r := range rs {
		if r.Failed() {
			s.Failed++
		}
		for k, n := range r.Faults {
			s.Faults[k] += n
		}
		for k, n := range r.Exits {
			t.Exits[k] += n
		}
		t.Events += r.Events
		t.Transactions += r.Transactions
		t.FailedTransactions += r.FailedTransactions
		t.AckedNotInTable += r.AckedNotInTable
		t.Records += r.Records
		t.Lost += r.Lost
		t.Reordered += r.Reordered
		t.DuplicateRecords += r.DuplicateRecords
		t.BrokerLost += r.BrokerLost
		t.PartnerApplied += r.PartnerApplied
		t.PartnerLost += r.PartnerLost
		t.PartnerReordered += r.PartnerReordered
		t.DoubleEffects += r.DoubleEffects
		t.PartnerReplayed += r.PartnerReplayed
		t.PartnerRefused += r.PartnerRefused
		t.ConcurrentCalls += r.ConcurrentCalls
		t.Seconds += r.Seconds
		for _, rec := range r.Recoveries {
			if rec.AfterLate {
				s.AfterLate++
				continue
			}
			if rec.KafkaRecovered {
				s.KafkaByKind[rec.Kind] = append(s.KafkaByKind[rec.Kind], rec)
			} else {
				s.KafkaPending[rec.Kind]++
			}
			if rec.Recovered {
				s.ByKind[rec.Kind] = append(s.ByKind[rec.Kind], rec)
			} else {
				s.Pending[rec.Kind]++
			}
		}
	}
	return s
}

// OK reports whether no run broke a guarantee.
func (s Summary) OK() bool { return s.Failed == 0 }

func pct(vs []int64, p float64) int64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p+0.5)]
}

// Print writes the report.
func (s Summary) Print(w io.Writer) {
	t := s.Total
	sync := "off (kill -9 keeps what reached the page cache)"
	if len(s.Runs) > 0 && s.Runs[0].SyncWrites {
		sync = "on (every batch fsynced before the answer)"
	}
	seeds := ""
	if len(s.Runs) > 0 {
		seeds = fmt.Sprintf("seeds %d..%d", s.Runs[0].Seed, s.Runs[len(s.Runs)-1].Seed)
	}
	fmt.Fprintf(w, "Ferry fault suite: %d runs (%s), broker sync writes %s, %.0f s\n", len(s.Runs), seeds, sync, t.Seconds)
	var fs []string
	total := 0
	for _, k := range Kinds {
		fs = append(fs, fmt.Sprintf("%s %d", k, s.Faults[k]))
		total += s.Faults[k]
	}
	fmt.Fprintf(w, "faults injected: %d (%s)\n", total, strings.Join(fs, ", "))
	fmt.Fprintf(w, "events committed: %d in %d transactions (%d transactions failed or had an unknown outcome; %d acknowledged commits missing from the table)\n",
		t.Events, t.Transactions, t.FailedTransactions, t.AckedNotInTable)
	fmt.Fprintf(w, "kafka (whole log, fresh reader): %d records; lost %d; reordered %d; duplicate records %d; lost by the broker (seen live, gone after a restart) %d\n",
		t.Records, t.Lost, t.Reordered, t.DuplicateRecords, t.BrokerLost)
	fmt.Fprintf(w, "partner: applied %d; lost %d; reordered %d; duplicate effects (applied twice) %d; calls for one event at once %d; redeliveries answered from the Idempotency-Key store %d; 503s drawn %d\n",
		t.PartnerApplied, t.PartnerLost, t.PartnerReordered, t.DoubleEffects, t.ConcurrentCalls, t.PartnerReplayed, t.PartnerRefused)
	var drains []int64
	for _, r := range s.Runs {
		drains = append(drains, r.DrainMS)
	}
	fmt.Fprintf(w, "caught up (load stopped -> every committed event in Kafka and at the partner): p50 %.1f s, max %.1f s\n",
		float64(pct(drains, 0.5))/1000, float64(pct(drains, 1))/1000)
	fmt.Fprintf(w, "exits the harness did not cause (supervisor restarted them): cdc %d, sink %d\n", t.Exits["cdc"], t.Exits["sink"])
	fmt.Fprintf(w, "recovery, fault end -> first event committed after it seen (ms; \"late\": not within the ceiling; slowest tenant: when every tenant writing after the fault had one delivered):\n")
	fmt.Fprintf(w, "  %-15s %6s %10s %10s %5s %12s %12s %5s %13s %13s\n", "fault", "faults", "kafka p50", "kafka max", "late", "partner p50", "partner max", "late", "slowest p50", "slowest max")
	var allK, allP, allS []int64
	lateK, lateP, n := 0, 0, 0
	for _, k := range Kinds {
		var ks, ps, ss []int64
		for _, r := range s.KafkaByKind[k] {
			ks = append(ks, r.ToKafkaMS)
		}
		for _, r := range s.ByKind[k] {
			ps, ss = append(ps, r.ToPartnerMS), append(ss, r.SlowestTenantMS)
		}
		allK, allP, allS = append(allK, ks...), append(allP, ps...), append(allS, ss...)
		lateK, lateP, n = lateK+s.KafkaPending[k], lateP+s.Pending[k], n+s.Faults[k]
		fmt.Fprintf(w, "  %-15s %6d %10d %10d %5d %12d %12d %5d %13d %13d\n", k, s.Faults[k], pct(ks, 0.5), pct(ks, 1), s.KafkaPending[k], pct(ps, 0.5), pct(ps, 1), s.Pending[k], pct(ss, 0.5), pct(ss, 1))
	}
	fmt.Fprintf(w, "  %-15s %6d %10d %10d %5d %12d %12d %5d %13d %13d\n", "all", n, pct(allK, 0.5), pct(allK, 1), lateK, pct(allP, 0.5), pct(allP, 1), lateP, pct(allS, 0.5), pct(allS, 1))
	if s.AfterLate > 0 {
		fmt.Fprintf(w, "  (%d faults came before the previous one had recovered: not timed)\n", s.AfterLate)
	}
	for _, r := range s.Runs {
		if !r.Failed() && len(r.ExitNotes) == 0 {
			continue
		}
		if r.Failed() {
			fmt.Fprintf(w, "run %d seed %d FAILED; files in %s\n", r.Run, r.Seed, r.Dir)
		}
		for _, x := range append(append(slices.Clone(r.Problems), r.Examples...), firstN(r.ExitNotes, 3)...) {
			fmt.Fprintf(w, "  run %d: %s\n", r.Run, x)
		}
	}
	if s.OK() {
		fmt.Fprintf(w, "result: PASS (0 lost, 0 reordered, 0 applied twice in %d runs)\n", len(s.Runs))
	} else {
		fmt.Fprintf(w, "result: FAIL (%d of %d runs: lost %d, reordered %d at Kafka; lost %d, reordered %d, applied twice %d, concurrent %d at the partner)\n",
			s.Failed, len(s.Runs), t.Lost, t.Reordered, t.PartnerLost, t.PartnerReordered, t.DoubleEffects, t.ConcurrentCalls)
	}
}

func firstN(ss []string, n int) []string {
	if len(ss) > n {
		return ss[:n]
	}
	return ss
}

// WriteJSON appends results as JSON lines.
func WriteJSON(w io.Writer, rs []Result) error {
	enc := json.NewEncoder(w)
	for _, r := range rs {
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("chaos: write results: %w", err)
		}
	}
	return nil
}

// ReadJSON reads results written by WriteJSON, ordered by seed.
func ReadJSON(r io.Reader) ([]Result, error) {
	var out []Result
	dec := json.NewDecoder(r)
	for dec.More() {
		var res Result
		if err := dec.Decode(&res); err != nil {
			return nil, fmt.Errorf("chaos: read results: %w", err)
		}
		out = append(out, res)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Seed < out[j].Seed })
	return out, nil
}
