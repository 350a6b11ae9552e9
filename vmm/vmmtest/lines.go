package vmmtest

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// Lines are text lines a test waits on (log records, refusals), added from
// any goroutine. Each line is returned by WaitFor at most once, so a test
// can wait for the second line that says something. The zero value is
// ready to use; safe for concurrent use.
type Lines struct {
	mu    sync.Mutex
	lines []string
	used  []bool
	more  chan struct{} // signalled on each Add
}

// Add appends a line.
func (l *Lines) Add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.used = append(l.used, false)
	more := l.moreLocked()
	l.mu.Unlock()
	select {
	case more <- struct{}{}:
	default:
	}
}

func (l *Lines) moreLocked() chan struct{} {
	if l.more == nil {
		l.more = make(chan struct{}, 1)
	}
	return l.more
}

// WaitFor waits for a line not returned before that says every one of
// words, and returns it; after Bound it fails the test, naming what it
// waited for and listing every line.
func (l *Lines) WaitFor(t testing.TB, what string, words ...string) string {
	t.Helper()
	deadline := time.After(Bound)
	for {
		l.mu.Lock()
		for i, line := range l.lines {
			if !l.used[i] && saysAll(line, words) {
				l.used[i] = true
				l.mu.Unlock()
				return line
			}
		}
		all := strings.Join(l.lines, "\n")
		more := l.moreLocked()
		l.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("no %s saying %q in:\n%s", what, words, all)
		}
	}
}

// Has says whether any line, returned or not, says every one of words.
func (l *Lines) Has(words ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if saysAll(line, words) {
			return true
		}
	}
	return false
}

func saysAll(line string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(line, w) {
			return false
		}
	}
	return true
}
