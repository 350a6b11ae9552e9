package mtls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
)

// ErrRefused marks a connection refused at the TLS handshake, by either
// side: a certificate not from the cluster's CA, for another name or
// expired, another protocol or version, a peer that does not speak TLS.
// Trying again does not help.
var ErrRefused = errors.New("refused at the TLS handshake")

// IsRefusal says whether err is a refusal at the TLS handshake, by this
// side or the peer (ErrRefused, or what crypto/tls returns for one), as
// opposed to a network failure worth trying again.
func IsRefusal(err error) bool {
	var ve *tls.CertificateVerificationError
	var rhe tls.RecordHeaderError
	var op *net.OpError
	return errors.Is(err, ErrRefused) || errors.As(err, &ve) || errors.As(err, &rhe) ||
		errors.As(err, &op) && op.Op == "remote error" ||
		strings.Contains(err.Error(), "tls: client requested unsupported application protocols") ||
		strings.Contains(err.Error(), "tls: server selected unadvertised ALPN protocol")
}

// refusal wraps a failed handshake in ErrRefused, with its reason in
// words. first are the bytes the peer sent before it failed (to tell an
// ftckpt that speaks in the clear, notTLS); dialled is the host dialled
// ("" on the accepting side).
func refusal(err error, first []byte, notTLS func([]byte) string, dialled string) error {
	if errors.Is(err, ErrRefused) {
		return err
	}
	if r := reason(err, first, notTLS, dialled); r != "" {
		return fmt.Errorf("%w: %s", ErrRefused, r)
	}
	return fmt.Errorf("%w: the handshake did not verify (%v): replayed, truncated or tampered records", ErrRefused, err)
}

func reason(err error, first []byte, notTLS func([]byte) string, dialled string) string {
	if len(first) > 0 && !looksLikeTLS(first) {
		if notTLS != nil {
			if d := notTLS(first); d != "" {
				return d
			}
		}
		return fmt.Sprintf("the peer does not speak TLS (it sent %q): is it run with --insecure, or not an ftckpt?", first)
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return certReason(ve, dialled)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		alert := op.Err.Error()
		hint := ""
		switch {
		case strings.Contains(alert, "no application protocol"):
			hint = ": it speaks another protocol or version (run the same ftckpt release on every host), or this is another service's port"
		case strings.Contains(alert, "expired"):
			hint = ": this host's certificate has expired (ftckpt certs init makes new ones)"
		case strings.Contains(alert, "certificate"), strings.Contains(alert, "handshake failure"):
			hint = ": is this host's certificate from its CA (--tls-ca), and a name it accepts (--peer-name)?"
		}
		return fmt.Sprintf("the peer refused this host (%s)%s", alert, hint)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "client requested unsupported application protocols"):
		return fmt.Sprintf("the peer speaks another protocol or version (%s): run the same ftckpt release on every host", msg)
	case strings.Contains(msg, "client didn't provide a certificate"):
		return "the peer sent no certificate (every host needs one from the cluster's CA: ftckpt certs init)"
	}
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) {
		return "the peer does not speak TLS: is it run with --insecure, or not an ftckpt?"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		if dialled != "" {
			return "the peer closed the connection in the TLS handshake: it refused this host, or it runs with --insecure"
		}
		return "the peer closed the connection in the TLS handshake (or sent a truncated one)"
	}
	if errors.Is(err, errNotAdmitted) {
		return err.Error()
	}
	return ""
}

// certReason says why a peer's certificate was not accepted.
func certReason(ve *tls.CertificateVerificationError, dialled string) string {
	about := "the peer's certificate"
	if len(ve.UnverifiedCertificates) > 0 {
		c := ve.UnverifiedCertificates[0]
		about = fmt.Sprintf("the peer's certificate %q", c.Subject.CommonName)
		var ua x509.UnknownAuthorityError
		if errors.As(ve.Err, &ua) {
			if bytes.Equal(c.RawIssuer, c.RawSubject) {
				return about + " is self-signed, not signed by this cluster's CA (--tls-ca): a stranger"
			}
			return fmt.Sprintf("%s is signed by %q, not by this cluster's CA (--tls-ca): a stranger, or a host of another cluster",
				about, c.Issuer.CommonName)
		}
	}
	var he x509.HostnameError
	if errors.As(ve.Err, &he) {
		return fmt.Sprintf("%s is for %s, not for %s, the host dialled (dial a name it was made for: ftckpt certs init --hosts)",
			about, strings.Join(CertNames(he.Certificate), ", "), dialled)
	}
	var ie x509.CertificateInvalidError
	if errors.As(ve.Err, &ie) {
		switch ie.Reason {
		case x509.Expired:
			return fmt.Sprintf("%s has expired or is not valid yet (valid %s to %s)", about,
				ie.Cert.NotBefore.Format("2006-01-02"), ie.Cert.NotAfter.Format("2006-01-02"))
		case x509.IncompatibleUsage:
			return about + " may not be used for this side of a connection"
		}
	}
	return fmt.Sprintf("%s does not verify: %v", about, ve.Err)
}

// looksLikeTLS says whether a stream that begins with b can be TLS: a
// handshake or alert record of TLS 1.0 to 1.3 (record version 3.x).
func looksLikeTLS(b []byte) bool {
	if len(b) > 0 && b[0] != 0x16 && b[0] != 0x15 {
		return false
	}
	return len(b) < 2 || b[1] == 3
}

// recorder keeps the first bytes read from a connection, to say what a
// peer that failed the handshake spoke instead.
type recorder struct {
	net.Conn
	first []byte // up to firstLen
}

const firstLen = 16

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if k := min(n, firstLen-len(r.first)); k > 0 {
		r.first = append(r.first, p[:k]...)
	}
	return n, err
}

// Refusal is err, a failed TLS handshake with dialled (HOST:PORT; "" on
// the accepting side), as an error wrapping ErrRefused that says why: for
// callers whose TLS client is not Dial's (net/http's).
func Refusal(err error, dialled string) error { return refusal(err, nil, nil, dialled) }
