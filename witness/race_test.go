package witness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// raceRounds makes the candidates (one arbiter and name each) race for the
// same generation, rounds times, starting one above the current holder. Every
// round must have exactly one winner, and every loser must be told that
// winner.
func raceRounds(t *testing.T, arbs []Arbiter, rounds int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cur, err := arbs[0].Current(ctx)
	if err != nil {
		t.Fatalf("Current before the race: %v", err)
	}
	names := make([]string, len(arbs))
	for i := range arbs {
		names[i] = fmt.Sprintf("cand-%d", i)
	}
	wins := make([]int, len(arbs))
	type result struct {
		c   Claim
		err error
	}
	for r := 1; r <= rounds; r++ {
		g := cur.Generation + uint64(r)
		res := make([]result, len(arbs))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, a := range arbs {
			wg.Go(func() {
				<-start
				c, err := a.Acquire(ctx, g, names[i])
				res[i] = result{c, err}
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, r := range res {
			if r.err == nil {
				if winner >= 0 {
					t.Fatalf("generation %d: two winners, %s and %s", g, names[winner], names[i])
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("generation %d: no winner: %v", g, res)
		}
		want := Claim{Generation: g, Owner: names[winner]}
		if res[winner].c != want {
			t.Fatalf("generation %d: winner got claim %v, want %v", g, res[winner].c, want)
		}
		wins[winner]++
		for i, r := range res {
			if i == winner {
				continue
			}
			var lost *LostError
			if !errors.As(r.err, &lost) || !errors.Is(r.err, ErrLost) {
				t.Fatalf("generation %d: loser %s got %v, want a *LostError", g, names[i], r.err)
			}
			if lost.Holder != want || r.c != want {
				t.Fatalf("generation %d: loser %s told holder %v (claim %v), want %v", g, names[i], lost.Holder, r.c, want)
			}
		}
	}
	after, err := arbs[len(arbs)-1].Current(ctx)
	if err != nil {
		t.Fatalf("Current after the race: %v", err)
	}
	if after.Generation != cur.Generation+uint64(rounds) {
		t.Fatalf("after %d rounds holder is %v, want generation %d", rounds, after, cur.Generation+uint64(rounds))
	}
	t.Logf("%d candidates, %d rounds: wins per candidate %v", len(arbs), rounds, wins)
}
