package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// issuanceCmd: agents attested with join tokens, each with -batch entries and
// a CSR for each, ask for SVIDs in batches; one agent, then all at once.
func issuanceCmd(args []string) error {
	var sf serverFlags
	fs := flag.NewFlagSet("issuance", flag.ExitOnError)
	sf.register(fs)
	agents := fs.Int("agents", 4, "agents asking at once in the second phase")
	batch := fs.Int("batch", 100, "SVIDs per BatchNewX509SVID")
	secs := fs.Float64("secs", 10, "seconds per phase")
	fs.Parse(args)
	if err := sf.check(); err != nil {
		return err
	}
	if *agents < 1 || *batch < 1 || *secs <= 0 {
		return fmt.Errorf("-agents, -batch and -secs must be positive")
	}
	ctx := context.Background()
	adm, err := dialAdmin(sf)
	if err != nil {
		return err
	}
	roots, err := adm.roots(ctx)
	if err != nil {
		return err
	}
	tokens, err := adm.tokens(ctx, *agents)
	if err != nil {
		return err
	}
	work := make([][]*svidv1.NewX509SVIDParams, len(tokens))
	for i, t := range tokens {
		list := make([]*types.Entry, *batch)
		for j := range list {
			list[j] = adm.entry(fmt.Sprintf("/bench/%s/%d", t, j), adm.agentID(t), 100000+j)
		}
		ids, err := adm.createEntries(ctx, list)
		if err != nil {
			return err
		}
		for _, id := range ids {
			csr, _, err := newCSR()
			if err != nil {
				return err
			}
			work[i] = append(work[i], &svidv1.NewX509SVIDParams{EntryId: id, Csr: csr})
		}
	}
	sims, err := attestMany(ctx, sf, roots, tokens, 4)
	if err != nil {
		return err
	}
	// The server authorizes from its entry cache: wait until every agent's
	// sync shows its entries.
	deadline := time.Now().Add(120 * time.Second)
	for _, a := range sims {
		for {
			n, err := a.sync(ctx)
			if err != nil {
				return err
			}
			if n >= *batch {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("an agent saw %d of its %d entries after 120 s", n, *batch)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	run := func(phase string, n int, d time.Duration) (float64, error) {
		emit(map[string]any{"event": "start", "phase": phase, "agents": n})
		var total atomic.Int64
		var firstErr error
		var mu sync.Mutex
		start := time.Now()
		end := start.Add(d)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					got, err := sims[i].issue(ctx, work[i])
					total.Add(int64(got))
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(start).Seconds()
		emit(map[string]any{"event": "end", "phase": phase, "svids": total.Load(), "secs": took})
		return float64(total.Load()) / took, firstErr
	}
	if _, err := run("warmup", 1, 300*time.Millisecond); err != nil {
		return err
	}
	d := time.Duration(*secs * float64(time.Second))
	one, err := run("1", 1, d)
	if err != nil {
		return err
	}
	many, err := run("n", len(sims), d)
	if err != nil {
		return err
	}
	emit(map[string]any{
		"event": "result", "agents": len(sims), "batch": *batch,
		"svids_per_sec_1_agent": one, "svids_per_sec_n_agents": many,
	})
	return nil
}

// syncCmd: simulated agents syncing every -period with jitter, at each agent
// count of -levels in turn (agents and their entries are added between
// levels), until the p99 sync latency passes -stop-p99-ms (or syncs fail) at
// a level of at least -stop-after agents.
func syncCmd(args []string) error {
	var sf serverFlags
	fs := flag.NewFlagSet("sync", flag.ExitOnError)
	sf.register(fs)
	levelsText := fs.String("levels", "100", "agent counts, increasing, comma-separated")
	perAgent := fs.Int("entries-per-agent", 20, "entries whose parent is each agent")
	secs := fs.Float64("secs", 30, "seconds of syncing at each level")
	period := fs.Duration("period", 5*time.Second, "the agents' sync period")
	stopMs := fs.Float64("stop-p99-ms", 100, "stop once the p99 passes this many ms")
	stopAfter := fs.Int("stop-after", 0, "never stop before this many agents")
	parallel := fs.Int("parallel", 16, "attestations at once")
	fs.Parse(args)
	if err := sf.check(); err != nil {
		return err
	}
	levels, err := parseLevels(*levelsText)
	if err != nil {
		return err
	}
	ctx := context.Background()
	adm, err := dialAdmin(sf)
	if err != nil {
		return err
	}
	roots, err := adm.roots(ctx)
	if err != nil {
		return err
	}
	var sims []*simAgent
	for _, level := range levels {
		t0 := time.Now()
		tokens, err := adm.tokens(ctx, level-len(sims))
		if err != nil {
			return err
		}
		var list []*types.Entry
		for i, t := range tokens {
			for j := range *perAgent {
				list = append(list, adm.entry(fmt.Sprintf("/sync/%d/%d", len(sims)+i, j), adm.agentID(t), 10000+j))
			}
		}
		if _, err := adm.createEntries(ctx, list); err != nil {
			return err
		}
		register := time.Since(t0).Seconds()
		t1 := time.Now()
		added, err := attestMany(ctx, sf, roots, tokens, *parallel)
		if err != nil {
			return err
		}
		sims = append(sims, added...)
		attestSecs := time.Since(t1).Seconds()
		// SPIRE's server answers from an entry cache it reloads every few
		// seconds: wait until the newest agent's entries are in it, so that
		// the window measures syncing, not the cache catching up.
		t2 := time.Now()
		newest := sims[len(sims)-1]
		for {
			n, err := newest.sync(ctx)
			if err == nil && n >= *perAgent {
				break
			}
			if time.Since(t2) > 120*time.Second {
				return fmt.Errorf("the newest agent saw %d of its %d entries after 120 s (%v)", n, *perAgent, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		newest.entries = map[string]int64{}
		settleSecs := time.Since(t2).Seconds()

		emit(map[string]any{"event": "start", "level": level})
		samples, errors, held := syncFor(ctx, sims, time.Duration(*secs*float64(time.Second)), *period)
		p50, p99, maxMs := percentiles(samples)
		emit(map[string]any{
			"event": "end", "level": level, "agents": len(sims), "entries": len(sims) * *perAgent,
			"entries_held": held, "syncs": len(samples), "errors": errors,
			"p50_ms": p50, "p99_ms": p99, "max_ms": maxMs,
			"register_secs": register, "attest_secs": attestSecs, "settle_secs": settleSecs,
		})
		if level >= *stopAfter && (p99 > *stopMs || errors > 0) {
			break
		}
	}
	emit(map[string]any{"event": "result", "agents": len(sims)})
	return nil
}

// syncFor runs every agent's sync loop for d: a random first delay within
// the period, then a sync every period ±10%. Returns the latencies of the
// syncs that succeeded, how many failed, and the entries held at the end.
func syncFor(ctx context.Context, sims []*simAgent, d, period time.Duration) ([]time.Duration, int, int) {
	end := time.Now().Add(d)
	var mu sync.Mutex
	var all []time.Duration
	var errors, held int
	var wg sync.WaitGroup
	for _, a := range sims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			failed, n := 0, len(a.entries)
			time.Sleep(time.Duration(rand.Float64() * float64(period)))
			for time.Now().Before(end) {
				t := time.Now()
				got, err := a.sync(ctx)
				if err != nil {
					failed++
				} else {
					mine = append(mine, time.Since(t))
					n = got
				}
				time.Sleep(time.Duration((0.9 + 0.2*rand.Float64()) * float64(period)))
			}
			mu.Lock()
			all = append(all, mine...)
			errors += failed
			held += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, errors, held
}

// percentiles gives p50, p99 and max in milliseconds (zeros when empty).
func percentiles(s []time.Duration) (float64, float64, float64) {
	if len(s) == 0 {
		return 0, 0, 0
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) float64 {
		i := int(float64(len(s)-1)*q + 0.5)
		return float64(s[i]) / float64(time.Millisecond)
	}
	return at(0.5), at(0.99), at(1)
}
