package nodetest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Log keeps the log records of a pair's nodes: tests wait on a node's
// events in it (Has), and a failed test prints it. Safe for concurrent
// use.
type Log struct {
	mu      sync.Mutex
	records []string
	events  []event
}

type event struct{ node, msg string }

// Logger returns a logger whose records go to l, as node's.
func (l *Log) Logger(node string) *slog.Logger {
	return slog.New(&logHandler{log: l, node: node})
}

// Has says whether node logged msg.
func (l *Log) Has(node, msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.node == node && e.msg == msg {
			return true
		}
	}
	return false
}

// String is every record so far, one a line.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.records, "\n")
}

// logHandler is a slog.Handler that writes into a Log.
type logHandler struct {
	log   *Log
	node  string
	attrs string // formatted, with a leading space each
	group string
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %-5s %s%s", r.Time.Format("15:04:05.000"), h.node, r.Level, r.Message, h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(h.format(a))
		return true
	})
	h.log.mu.Lock()
	h.log.records = append(h.log.records, b.String())
	h.log.events = append(h.log.events, event{h.node, r.Message})
	h.log.mu.Unlock()
	return nil
}

func (h *logHandler) format(a slog.Attr) string {
	return fmt.Sprintf(" %s%s=%v", h.group, a.Key, a.Value)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	for _, a := range as {
		c.attrs += h.format(a)
	}
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.group += name + "."
	return &c
}
