// Package mtls is how ftckpt's hosts know each other: mutual TLS 1.3 on
// every connection between them — primary and backup (both modes), witness
// nodes among themselves (raft), clients and witness nodes.
//
// A cluster has one CA. Each host holds a certificate the CA signed, with
// its names (DNS names or IP addresses) and both uses (it dials and it
// accepts); `ftckpt certs init` makes them (certs.go). A peer is accepted
// only if its certificate chains to the cluster's CA and, when the node
// names the peers it accepts (--peer-name), carries one of those names;
// the side that dials also checks that the certificate is for the host it
// dialled. Every connection names its protocol and version in ALPN
// (ftckpt/6, ftckpt-raft/1, ftckpt-witness/1), so a peer of another
// version, or one that dialled the wrong port, is refused in the handshake
// too. There is no session resumption: every connection shows its
// certificate.
//
// In TLS 1.3 the dialling side finishes its handshake before the accepting
// side has checked its certificate. Where the dialler must know it was
// accepted before it goes on (the replication link, raft), the accepting
// side confirms with one byte, Admitted, once it has; a refusal reaches the
// dialler as the alert the accepting side sent instead.
//
// Listener accepts in the background: each connection's handshake runs in
// its own goroutine under a deadline, and Accept returns only connections
// that passed it, so a stranger neither reaches the protocol behind the
// listener nor holds up the peers that follow it. Refusals are logged, with
// the reason, and reported to ListenOptions.Refused.
//
// A nil *Identity means plain TCP (ftckpt --insecure): the same listeners
// and dialers, without TLS.
package mtls
