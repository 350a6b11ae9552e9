// Command ftckpt is a fault-tolerant hypervisor: a primary runs a guest on KVM,
// a backup keeps an exact copy, and the backup goes live if the primary dies.
//
// This package only parses flags and wires the other packages together; it
// owns no logic of its own.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ftckpt:", err)
		os.Exit(1)
	}
}
