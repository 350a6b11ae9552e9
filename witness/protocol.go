package witness

// The client protocol of the raft witness: HTTP/1.1, JSON bodies, two calls.
//
//	POST /v1/acquire  {"version":1,"generation":G,"owner":"O"}
//	POST /v1/current  {"version":1}
//
// Every answer is HTTP 200 with a response body, except a malformed or
// wrong-version request (HTTP 400, status "error"). Only the leader decides;
// it puts the request through the raft log (reads too, so a deposed leader
// cannot answer from stale state).
//
//	client                    follower                  leader
//	  │ POST /v1/acquire         │                          │
//	  │─────────────────────────▶│                          │
//	  │ {"status":"redirect","leader":"L"}                  │
//	  │◀─────────────────────────│                          │
//	  │ POST /v1/acquire                                    │
//	  │────────────────────────────────────────────────────▶│ raft Apply, commit
//	  │ {"status":"won"|"lost","claim":{...}}               │ on a quorum
//	  │◀────────────────────────────────────────────────────│
//
// A node that knows no leader answers "no_leader"; a leader that lost its
// leadership or timed out before commit answers "unknown" (the entry may yet
// commit). Both are retried by the client, on every node, with backoff,
// until its context ends; retrying an acquire is safe (see Arbiter.Acquire).

// ProtocolVersion is the version of the client protocol. A node refuses a
// request of another version, and a client refuses such an answer.
const ProtocolVersion = 1

// With TLS (mtls), the client protocol is HTTPS whose ALPN names it and
// its version, and raft's connections between nodes name theirs: a client
// or a node of another version, or a connection to the wrong port, is
// refused in the handshake. Raft's connections end their handshake with
// mtls.Admitted.
const (
	ClientALPN = "ftckpt-witness/1"
	RaftALPN   = "ftckpt-raft/1"
)

const (
	pathAcquire = "/v1/acquire"
	pathCurrent = "/v1/current"
)

// status is the kind of a node's answer. The zero value is invalid.
type status string

const (
	statusWon      status = "won"       // acquire: the caller holds the generation
	statusLost     status = "lost"      // acquire: claim is the holder
	statusHolder   status = "holder"    // current: claim is the holder
	statusRedirect status = "redirect"  // not the leader; leader is its client address
	statusNoLeader status = "no_leader" // not the leader, and no leader known
	statusUnknown  status = "unknown"   // the leader could not commit; outcome unknown
	statusError    status = "error"     // the request was refused; do not retry
)

type request struct {
	Version    int    `json:"version"`
	Generation uint64 `json:"generation,omitempty"`
	Owner      string `json:"owner,omitempty"`
}

type response struct {
	Version int    `json:"version"`
	Status  status `json:"status"`
	Claim   Claim  `json:"claim"`
	Leader  string `json:"leader,omitempty"`
	Error   string `json:"error,omitempty"`
}
