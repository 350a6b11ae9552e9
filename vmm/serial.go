package vmm

import (
	"fmt"
	"io"
	"sync"
)

// 16550 register offsets and bits (the subset guests and Linux's 8250 driver use).
const (
	uartRBR = 0 // read: receive buffer; write: THR; DLAB: divisor low
	uartIER = 1 // interrupt enable; DLAB: divisor high
	uartIIR = 2 // read: interrupt identification; write: FIFO control
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	uartLCRDLAB = 0x80
	uartIERRDI  = 0x01 // received data available
	uartIERTHRI = 0x02 // transmitter holding register empty
	uartIIRNone = 0x01
	uartIIRTHRI = 0x02
	uartIIRRDI  = 0x04
	uartIIRFIFO = 0xc0
	uartFCREn   = 0x01
	uartLSRDR   = 0x01
	uartLSRTHRE = 0x20
	uartLSRTEMT = 0x40
	uartMCRLoop = 0x10

	uartFIFOSize = 16
)

// serialState is the plain-data state of a 16550.
type serialState struct {
	IER, LCR, MCR, SCR, DLL, DLM, FCR uint8
	// THRIPending is set when the transmitter became empty and the guest has
	// not yet read IIR since (the THRE interrupt is edge-like).
	THRIPending uint8
	RxLen       uint8
	RxFIFO      [uartFIFOSize]byte
}

// Serial is a 16550 UART. Transmitted bytes go to the console writer; in
// loopback mode they come back as received bytes (Linux probes this).
//
// mu protects st; the console is written under mu so bytes keep their order.
type Serial struct {
	id      string
	base    uint16
	console io.Writer
	irq     func(level bool) // sets the UART's interrupt line; nil: no interrupts

	mu sync.Mutex
	st serialState
}

// NewSerial makes a UART at I/O port base. console may be nil (output is
// dropped); irq may be nil (the guest must poll).
func NewSerial(id string, base uint16, console io.Writer, irq func(level bool)) *Serial {
	s := &Serial{id: id, base: base, console: console, irq: irq}
	return s
}

// PIORead implements PIODevice.
func (s *Serial) PIORead(port uint16, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	var v uint8
	switch port - s.base {
	case uartRBR:
		if st.LCR&uartLCRDLAB != 0 {
			v = st.DLL
		} else if st.RxLen > 0 {
			v = st.RxFIFO[0]
			copy(st.RxFIFO[:], st.RxFIFO[1:st.RxLen])
			st.RxLen--
		}
	case uartIER:
		if st.LCR&uartLCRDLAB != 0 {
			v = st.DLM
		} else {
			v = st.IER
		}
	case uartIIR:
		v = s.iirLocked()
		if v&0x0f == uartIIRTHRI {
			st.THRIPending = 0
		}
	case uartLCR:
		v = st.LCR
	case uartMCR:
		v = st.MCR
	case uartLSR:
		v = uartLSRTHRE | uartLSRTEMT
		if st.RxLen > 0 {
			v |= uartLSRDR
		}
	case uartMSR:
		if st.MCR&uartMCRLoop != 0 {
			// Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
			m := st.MCR
			v = (m&0x01)<<5 | (m&0x02)<<3 | (m&0x04)<<4 | (m&0x08)<<4
		} else {
			v = 0xb0 // DCD, DSR, CTS
		}
	case uartSCR:
		v = st.SCR
	}
	for i := range data {
		data[i] = 0
	}
	data[0] = v
	s.updateIRQLocked()
}

// PIOWrite implements PIODevice.
func (s *Serial) PIOWrite(port uint16, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	v := data[0]
	switch port - s.base {
	case uartRBR:
		if st.LCR&uartLCRDLAB != 0 {
			st.DLL = v
			break
		}
		if st.MCR&uartMCRLoop != 0 {
			if st.RxLen < uartFIFOSize {
				st.RxFIFO[st.RxLen] = v
				st.RxLen++
			}
		} else if s.console != nil {
			s.console.Write([]byte{v}) //nolint:errcheck // a console that fails must not stop the guest
		}
		st.THRIPending = 1
	case uartIER:
		if st.LCR&uartLCRDLAB != 0 {
			st.DLM = v
		} else {
			if v&uartIERTHRI != 0 && st.IER&uartIERTHRI == 0 {
				st.THRIPending = 1 // enabling THRI with an empty THR raises it
			}
			st.IER = v & 0x0f
		}
	case uartIIR:
		st.FCR = v
		if v&0x02 != 0 {
			st.RxLen = 0
		}
	case uartLCR:
		st.LCR = v
	case uartMCR:
		st.MCR = v & 0x1f
	case uartSCR:
		st.SCR = v
	}
	s.updateIRQLocked()
}

func (s *Serial) iirLocked() uint8 {
	st := &s.st
	v := uint8(uartIIRNone)
	switch {
	case st.IER&uartIERRDI != 0 && st.RxLen > 0:
		v = uartIIRRDI
	case st.IER&uartIERTHRI != 0 && st.THRIPending != 0:
		v = uartIIRTHRI
	}
	if st.FCR&uartFCREn != 0 {
		v |= uartIIRFIFO
	}
	return v
}

func (s *Serial) updateIRQLocked() {
	if s.irq != nil {
		s.irq(s.iirLocked()&uartIIRNone == 0)
	}
}

var _ Device = (*Serial)(nil)

// Quiesce implements Quiescer. Nothing to do: the UART takes no input from
// the host, so it changes only on a vCPU's port access.
func (s *Serial) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (s *Serial) Wake() {}

// ID implements Component.
func (s *Serial) ID() string { return "serial/" + s.id }

// StateVersion implements Component.
func (s *Serial) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (s *Serial) SaveState() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return encodePlain(&s.st)
}

// RestoreState implements Component.
func (s *Serial) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(s.ID(), version, s.StateVersion()); err != nil {
		return err
	}
	var st serialState
	if err := decodePlain(data, &st); err != nil {
		return err
	}
	if st.RxLen > uartFIFOSize {
		return fmt.Errorf("%s: receive FIFO holds %d bytes, at most %d: %w", s.ID(), st.RxLen, uartFIFOSize, ErrMismatch)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	return nil
}
