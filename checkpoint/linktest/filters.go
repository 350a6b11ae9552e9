package linktest

import (
	"encoding/binary"
	"io"
	"time"
)

// Frames is a Filter that reads the stream as the protocol's frames
// (checkpoint.WriteMessage: length:u32, version:u16, type:u16, payload)
// and hands each frame's type and payload to edit, which may change the
// payload in place (not its length) and says whether the frame goes on;
// a frame left out is lost on the way. edit runs on the filter's
// goroutine, one frame at a time.
func Frames(edit func(typ uint16, payload []byte) (pass bool)) Filter {
	return func(from io.Reader, to io.Writer) {
		hdr := make([]byte, 8)
		for {
			if _, err := io.ReadFull(from, hdr); err != nil {
				return
			}
			frame := make([]byte, 8+binary.LittleEndian.Uint32(hdr))
			copy(frame, hdr)
			if _, err := io.ReadFull(from, frame[8:]); err != nil {
				return
			}
			if !edit(binary.LittleEndian.Uint16(hdr[6:]), frame[8:]) {
				continue
			}
			if _, err := to.Write(frame); err != nil {
				return
			}
		}
	}
}

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
