package node

import (
	"fmt"
	"io"
	"time"
)

// statusLines writes line() to w every interval until stopped, unless it
// says the same as last time (an idle guest). A zero interval or a nil w
// writes nothing.
func statusLines(w io.Writer, every time.Duration, line func() string) (stop func()) {
	if every <= 0 || w == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if l := line(); l != last {
					fmt.Fprintln(w, l)
					last = l
				}
			}
		}
	}()
	return func() { close(done) }
}
