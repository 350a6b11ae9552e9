package witness

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
)

// DefaultSpec is the arbiter used when none is named: a lease file in the
// working directory. It only arbitrates between candidates on one host (or
// sharing that directory); name a shared arbiter for real failover.
const DefaultSpec = "disk:ftckpt.lease"

// Open returns the Arbiter a spec names:
//
//	raft://HOST:PORT,HOST:PORT,...   a raft witness cluster; the addresses are
//	                                 the nodes' client ports (their --bind)
//	disk:PATH                        a lease file at PATH, created if missing
//	disk:IMAGE#OFFSET                the lease block at byte OFFSET (decimal or
//	                                 0x hex, a multiple of 512) of an existing
//	                                 disk image
//	""                               DefaultSpec
//
// The first '#' ends PATH, so a path containing '#' cannot be named.
//
// Open talks to a raft witness in plain HTTP; OpenWith can give it TLS.
func Open(spec string) (Arbiter, error) { return OpenWith(spec, OpenOptions{}) }

// OpenOptions are what an arbiter needs besides its spec.
type OpenOptions struct {
	// TLS is this host's identity in its cluster: a raft witness client
	// speaks mutual TLS 1.3 with it, to nodes whose certificates the same
	// CA signed. nil is plain HTTP. A disk lease has no use for it.
	TLS *mtls.Identity
}

// OpenWith is Open with opts.
func OpenWith(spec string, opts OpenOptions) (Arbiter, error) {
	if spec == "" {
		spec = DefaultSpec
	}
	switch {
	case strings.HasPrefix(spec, "raft://"):
		addrs, err := parseRaftSpec(strings.TrimPrefix(spec, "raft://"))
		if err != nil {
			return nil, fmt.Errorf("arbiter %q: %w", spec, err)
		}
		return NewRaftClient(addrs, ClientOptions{TLS: opts.TLS})
	case strings.HasPrefix(spec, "disk:"):
		path, offset, image, err := parseDiskSpec(strings.TrimPrefix(spec, "disk:"))
		if err != nil {
			return nil, fmt.Errorf("arbiter %q: %w", spec, err)
		}
		if image {
			return OpenLeaseBlock(path, offset)
		}
		return OpenLeaseFile(path)
	}
	return nil, fmt.Errorf("arbiter %q: unknown kind; want raft://HOST:PORT,... or disk:PATH or disk:IMAGE#OFFSET", spec)
}

func parseRaftSpec(list string) ([]string, error) {
	if list == "" {
		return nil, fmt.Errorf("no witness addresses after raft://")
	}
	seen := map[string]bool{}
	var addrs []string
	for _, a := range strings.Split(list, ",") {
		if err := checkHostPort(a); err != nil {
			return nil, err
		}
		if seen[a] {
			return nil, fmt.Errorf("witness %s listed twice", a)
		}
		seen[a] = true
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// checkHostPort accepts host:port with a non-empty host and a port 1..65535.
func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("witness address %q: %w", a, err)
	}
	if host == "" {
		return fmt.Errorf("witness address %q: empty host", a)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("witness address %q: port must be 1..65535", a)
	}
	return nil
}

func parseDiskSpec(s string) (path string, offset int64, image bool, err error) {
	path, off, image := strings.Cut(s, "#")
	if path == "" {
		return "", 0, false, errors.New("empty path; want disk:PATH or disk:IMAGE#OFFSET")
	}
	if !image {
		return path, 0, false, nil
	}
	o, err := strconv.ParseInt(off, 0, 64)
	if err != nil || o < 0 {
		return "", 0, false, fmt.Errorf("lease block offset %q: want a non-negative byte offset", off)
	}
	if o%leaseBlockSize != 0 {
		return "", 0, false, fmt.Errorf("lease block offset %d: must be a multiple of %d", o, leaseBlockSize)
	}
	return path, o, true, nil
}
