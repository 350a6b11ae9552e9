package linktest

import (
	"io"
	"time"
)

// Delay is a Filter that delivers each chunk it reads d after it read it:
// a path with latency d, whose data in flight dies with the connection.
// (It waits in real time: the latency is what it is for.)
func Delay(d time.Duration) Filter {
	return func(from io.Reader, to io.Writer) {
		type chunk struct {
			at   time.Time
			data []byte
		}
		q := make(chan chunk, 1024)
		done := make(chan struct{})
		defer close(done)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 64<<10)
				n, err := from.Read(buf)
				if n > 0 {
					select {
					case q <- chunk{time.Now().Add(d), buf[:n]}:
					case <-done:
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range q {
			time.Sleep(time.Until(c.at)) // the latency
			if _, err := to.Write(c.data); err != nil {
				return
			}
		}
	}
}
