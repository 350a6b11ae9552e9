package bench

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// events keeps the warnings and errors one configuration's nodes log (the
// bench's nodes log nothing else): what says why a backup was lost or never
// got in sync. Safe for concurrent use.
type events struct {
	mu    sync.Mutex
	lines []string
}

// logger is a node's log, named node ("primary", "backup"), into e.
func (e *events) logger(node string) *slog.Logger {
	h := slog.NewTextHandler(e, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // the progress lines are in order
			}
			return a
		},
	})
	return slog.New(h).With("node", node)
}

// Write takes one record (a slog.TextHandler writes each in one call).
func (e *events) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lines = append(e.lines, string(bytes.TrimSuffix(p, []byte("\n"))))
	return len(p), nil
}

// mark is where the next record will go, for since.
func (e *events) mark() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.lines)
}

// since is the records logged from mark m on.
func (e *events) since(m int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.lines[m:]...)
}

// saidAtMost is the most records an error or a lapse repeats: the last.
const saidAtMost = 20

// said renders records for an error: "; the nodes logged: ..." (the last
// saidAtMost) or that they logged nothing.
func said(records []string) string {
	if len(records) == 0 {
		return "; the nodes logged no warning"
	}
	return "; the nodes logged: " + strings.Join(last(records), "; ")
}

// last is the last saidAtMost records, after a line saying how many more
// came before.
func last(records []string) []string {
	if n := len(records) - saidAtMost; n > 0 {
		return append([]string{fmt.Sprintf("(%d earlier records left out)", n)}, records[n:]...)
	}
	return records
}

// indent renders records as progress lines, one each, indented.
func indent(records []string) string {
	var b strings.Builder
	for _, r := range records {
		b.WriteString("    " + r + "\n")
	}
	return b.String()
}
