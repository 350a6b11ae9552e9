package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Files name a host's identity in PEM files (what `ftckpt certs init`
// writes): its certificate and key, and the CA of its cluster. PeerNames,
// if any, are the only certificate names accepted from a peer.
type Files struct {
	Cert, Key, CA string
	PeerNames     []string
}

// IsZero says whether f names nothing at all.
func (f Files) IsZero() bool {
	return f.Cert == "" && f.Key == "" && f.CA == "" && len(f.PeerNames) == 0
}

// Missing names the flags of f that are empty when others are set: all
// three files go together.
func (f Files) Missing() []string {
	var missing []string
	for _, x := range []struct{ flag, v string }{{"--tls-cert", f.Cert}, {"--tls-key", f.Key}, {"--tls-ca", f.CA}} {
		if x.v == "" {
			missing = append(missing, x.flag)
		}
	}
	return missing
}

// Identity is a host's certificate and key, the cluster's CA, and the peer
// names it accepts: what every TLS connection of the host is configured
// from. It is immutable and safe for concurrent use.
type Identity struct {
	cert  tls.Certificate
	leaf  *x509.Certificate
	roots *x509.CertPool
	// peers are the certificate names accepted from peers; nil: any
	// certificate the CA signed.
	peers []string
}

// Load reads the files f names and checks them: the key is the
// certificate's, and the certificate is valid now and signed by the CA.
func Load(f Files) (*Identity, error) {
	if m := f.Missing(); len(m) > 0 {
		return nil, fmt.Errorf("TLS: %s missing (--tls-cert, --tls-key and --tls-ca go together)", strings.Join(m, ", "))
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("--tls-key: %w", err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	id, err := New(certPEM, keyPEM, caPEM, f.PeerNames)
	if err != nil {
		return nil, fmt.Errorf("TLS identity (--tls-cert %s, --tls-key %s, --tls-ca %s): %w", f.Cert, f.Key, f.CA, err)
	}
	return id, nil
}

// New is Load from the PEM contents themselves.
func New(certPEM, keyPEM, caPEM []byte, peerNames []string) (*Identity, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	roots := x509.NewCertPool()
	n := 0
	for rest := caPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		ca, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		if !ca.IsCA {
			return nil, fmt.Errorf("CA certificate %q is not a CA", ca.Subject.CommonName)
		}
		roots.AddCert(ca)
		n++
	}
	if n == 0 {
		return nil, errors.New("the CA file holds no certificate")
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("this host's certificate %q does not verify against the CA: %w", leaf.Subject.CommonName, err)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			return nil, fmt.Errorf("this host's certificate %q cannot both dial and accept (it needs the server and client uses; ftckpt certs init gives both)", leaf.Subject.CommonName)
		}
	}
	var peers []string
	for _, p := range peerNames {
		if p = strings.TrimSpace(p); p != "" {
			peers = append(peers, p)
		}
	}
	return &Identity{cert: cert, leaf: leaf, roots: roots, peers: peers}, nil
}

// Name is the host's certificate's name (its common name).
func (id *Identity) Name() string { return id.leaf.Subject.CommonName }

// Expires is when the host's certificate expires.
func (id *Identity) Expires() time.Time { return id.leaf.NotAfter }

// PeerNames are the certificate names accepted from peers (nil: any the
// CA signed).
func (id *Identity) PeerNames() []string { return slices.Clone(id.peers) }

// ServerConfig is the configuration of the accepting side of a connection
// speaking proto (its ALPN name): TLS 1.3 only, a client certificate from
// the CA required, and, with peer names, one of them.
func (id *Identity) ServerConfig(proto string) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{id.cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              id.roots,
		NextProtos:             []string{proto},
		SessionTicketsDisabled: true,
		// Full-size records from the first byte: the links carry bulk
		// state, not web pages whose first bytes should come early.
		DynamicRecordSizingDisabled: true,
		VerifyConnection:            func(cs tls.ConnectionState) error { return id.verify(cs, proto) },
	}
}

// ClientConfig is the configuration of the dialling side of a connection
// to serverName (the host dialled: the peer's certificate must be for it)
// speaking proto. An empty serverName is set by the caller's transport
// (net/http sets the URL's host).
func (id *Identity) ClientConfig(serverName, proto string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		RootCAs:    id.roots,
		// The certificate goes whatever CAs the peer names: a host of
		// another cluster is then told so by name, not "no certificate".
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &id.cert, nil },
		ServerName:           serverName,
		NextProtos:           []string{proto},
		VerifyConnection:     func(cs tls.ConnectionState) error { return id.verify(cs, proto) },
	}
}

// verify is what both sides check beyond the chain: the protocol agreed
// and the peer's name. The chain (and, dialling, the host name) crypto/tls
// has verified already.
func (id *Identity) verify(cs tls.ConnectionState, proto string) error {
	if cs.NegotiatedProtocol != proto {
		if cs.NegotiatedProtocol == "" {
			return fmt.Errorf("%w: the peer offered no protocol, this host speaks %s", ErrRefused, proto)
		}
		return fmt.Errorf("%w: the peer speaks %s, this host %s", ErrRefused, cs.NegotiatedProtocol, proto)
	}
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the peer sent no certificate", ErrRefused)
	}
	leaf := cs.PeerCertificates[0]
	if len(id.peers) == 0 {
		return nil
	}
	names := CertNames(leaf)
	for _, n := range names {
		if slices.Contains(id.peers, n) {
			return nil
		}
	}
	return fmt.Errorf("%w: the peer's certificate is for %s, none of them a name this host accepts (--peer-name %s)",
		ErrRefused, strings.Join(names, ", "), strings.Join(id.peers, ","))
}

// CertNames are the names a certificate is for: its common name, DNS names
// and IP addresses, each once.
func CertNames(c *x509.Certificate) []string {
	var names []string
	add := func(n string) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	add(c.Subject.CommonName)
	for _, n := range c.DNSNames {
		add(n)
	}
	for _, ip := range c.IPAddresses {
		add(ip.String())
	}
	return names
}
