package outbuf

import "fmt"

// Config bounds a Buffer's memory. It is plain data.
type Config struct {
	// MaxBytes bounds the bytes of held outputs' data (per-output overhead
	// is bounded by MaxOutputs). An output larger than this is refused.
	MaxBytes int64
	// MaxOutputs bounds the number of held outputs.
	MaxOutputs int
}

// DefaultConfig holds up to 64 MiB in up to 65,536 outputs: at 25 ms
// epochs, enough for about 2.5 GB/s of output with a backup that acks within
// one epoch.
func DefaultConfig() Config {
	return Config{MaxBytes: 64 << 20, MaxOutputs: 1 << 16}
}

// Validate reports the first field that cannot work.
func (c Config) Validate() error {
	if c.MaxBytes <= 0 {
		return fmt.Errorf("outbuf config: MaxBytes %d must be positive", c.MaxBytes)
	}
	if c.MaxOutputs <= 0 {
		return fmt.Errorf("outbuf config: MaxOutputs %d must be positive", c.MaxOutputs)
	}
	return nil
}
