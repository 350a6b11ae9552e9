package witness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
)

// errProtocol marks an answer that is not this protocol version: retrying
// will not help.
var errProtocol = errors.New("client protocol mismatch")

// ClientOptions tune a RaftClient. The zero value is usable.
type ClientOptions struct {
	// RequestTimeout bounds one request to one node. Zero means 2 s.
	RequestTimeout time.Duration
	// Backoff is the wait between rounds over all nodes.
	Backoff Backoff
	// TLS, if set, is this host's identity: the client speaks mutual TLS
	// 1.3 (ALPN ClientALPN) to nodes whose certificates its CA signed and
	// are for the addresses dialled. nil is plain HTTP.
	TLS *mtls.Identity
}

// RaftClient is the Arbiter of a raft witness cluster, speaking the client
// protocol (protocol.go) to its nodes. It finds the leader by following
// redirects, and retries through elections, round after round over every
// node with backoff, until a node decides or ctx ends. It is safe for
// concurrent use.
type RaftClient struct {
	nodes   []string
	opts    ClientOptions
	http    *http.Client
	scheme  string     // http, or https with TLS
	mu      sync.Mutex // protects leader
	leader  string     // the node that last decided; tried first
	maxRedo int        // redirects followed in one round
}

// NewRaftClient returns a client of the cluster whose nodes answer the
// client protocol at addrs (host:port).
func NewRaftClient(addrs []string, opts ClientOptions) (*RaftClient, error) {
	if len(addrs) == 0 {
		return nil, errors.New("raft witness client: no node addresses")
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 2 * time.Second
	}
	tr, scheme := &http.Transport{MaxIdleConnsPerHost: 4}, "http"
	if opts.TLS != nil {
		// ServerName is left to the transport: the host of each URL.
		tr.TLSClientConfig, scheme = opts.TLS.ClientConfig("", ClientALPN), "https"
	}
	return &RaftClient{
		nodes:   slices.Clone(addrs),
		opts:    opts,
		http:    &http.Client{Transport: tr},
		scheme:  scheme,
		maxRedo: len(addrs) + 1,
	}, nil
}

// String names the client in Open's spec syntax.
func (c *RaftClient) String() string { return "raft://" + strings.Join(c.nodes, ",") }

// Acquire implements Arbiter.
func (c *RaftClient) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	if err := validateRequest(g, owner); err != nil {
		return Claim{}, err
	}
	resp, err := c.call(ctx, pathAcquire, request{Version: ProtocolVersion, Generation: g, Owner: owner})
	if err != nil {
		return Claim{}, fmt.Errorf("acquiring generation %d for %q at %s: %w", g, owner, c, err)
	}
	switch resp.Status {
	case statusWon:
		if resp.Claim != (Claim{Generation: g, Owner: owner}) {
			return Claim{}, fmt.Errorf("acquiring generation %d for %q at %s: node said won but holder is %s", g, owner, c, resp.Claim)
		}
		return resp.Claim, nil
	case statusLost:
		return outcome(resp.Claim, false, g, owner)
	}
	return Claim{}, fmt.Errorf("acquiring generation %d at %s: unexpected answer %q", g, c, resp.Status)
}

// Current implements Arbiter.
func (c *RaftClient) Current(ctx context.Context) (Claim, error) {
	resp, err := c.call(ctx, pathCurrent, request{Version: ProtocolVersion})
	if err != nil {
		return Claim{}, fmt.Errorf("reading holder at %s: %w", c, err)
	}
	if resp.Status != statusHolder {
		return Claim{}, fmt.Errorf("reading holder at %s: unexpected answer %q", c, resp.Status)
	}
	return resp.Claim, nil
}

// Close implements Arbiter: it closes idle connections.
func (c *RaftClient) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// call sends req to the leader and returns its decisive answer (won, lost
// or holder). Until one comes, it goes round the nodes, following
// redirects, waiting with backoff between rounds; when ctx ends the error
// wraps ErrUnreachable and says what each node last answered. A round in
// which every node refused this host at the TLS handshake (or this host
// every node) ends it at once with an error wrapping mtls.ErrRefused:
// waiting will not change certificates.
func (c *RaftClient) call(ctx context.Context, path string, req request) (response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return response{}, err
	}
	last := map[string]string{} // node → why it did not decide
	var wait time.Duration
	for round := 1; ; round++ {
		redirects := 0
		refused := map[string]bool{} // nodes that refused in this round
		for _, addr := range c.order() {
			for addr != "" {
				resp, err := c.post(ctx, addr, path, body)
				next := ""
				switch {
				case errors.Is(err, errProtocol):
					return response{}, fmt.Errorf("node %s: %w", addr, err)
				case err != nil && ctx.Err() == nil && mtls.IsRefusal(err):
					last[addr] = mtls.Refusal(err, addr).Error()
					refused[addr] = true
				case err != nil:
					last[addr] = err.Error()
				case resp.Status == statusWon || resp.Status == statusLost || resp.Status == statusHolder:
					c.setLeader(addr)
					return resp, nil
				case resp.Status == statusRedirect:
					last[addr] = "not the leader, redirected to " + resp.Leader
					if redirects < c.maxRedo && resp.Leader != addr {
						redirects++
						next = resp.Leader
					}
				case resp.Status == statusNoLeader || resp.Status == statusUnknown:
					last[addr] = resp.Error
				case resp.Status == statusError:
					return response{}, fmt.Errorf("node %s refused the request: %s", addr, resp.Error)
				default:
					return response{}, fmt.Errorf("node %s: unknown answer status %q", addr, resp.Status)
				}
				addr = next
			}
			if ctx.Err() != nil {
				break
			}
		}
		if len(refused) == len(c.nodes) {
			return response{}, fmt.Errorf("every witness node refused this host, or this host every node: %w (%s)",
				mtls.ErrRefused, describe(last))
		}
		wait = c.opts.Backoff.next(wait)
		if err := sleep(ctx, wait); err != nil {
			return response{}, fmt.Errorf("%w: witness quorum unreachable, no leader decided in %d rounds over %d nodes (%s): %w",
				ErrUnreachable, round, len(c.nodes), describe(last), err)
		}
	}
}

// order returns the nodes to try, the last known leader first.
func (c *RaftClient) order() []string {
	c.mu.Lock()
	leader := c.leader
	c.mu.Unlock()
	out := make([]string, 0, len(c.nodes)+1)
	if leader != "" {
		out = append(out, leader)
	}
	for _, n := range c.nodes {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

func (c *RaftClient) setLeader(addr string) {
	c.mu.Lock()
	c.leader = addr
	c.mu.Unlock()
}

// post sends one request to one node. A transport failure or an answer
// that is not the protocol is an error.
func (c *RaftClient) post(ctx context.Context, addr, path string, body []byte) (response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.scheme+"://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := c.http.Do(hreq)
	if err != nil {
		return response{}, err
	}
	defer hresp.Body.Close()
	var resp response
	if err := json.NewDecoder(io.LimitReader(hresp.Body, 4096)).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("HTTP %d, decoding answer: %w", hresp.StatusCode, err)
	}
	if resp.Version != ProtocolVersion {
		return response{}, fmt.Errorf("%w: answer in protocol version %d, this client speaks %d", errProtocol, resp.Version, ProtocolVersion)
	}
	return resp, nil
}

// describe lists what each node last said, in a stable order.
func describe(last map[string]string) string {
	keys := make([]string, 0, len(last))
	for k := range last {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+": "+last[k])
	}
	return strings.Join(parts, "; ")
}
