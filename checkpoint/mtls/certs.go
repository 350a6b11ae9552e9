package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A small cluster's certificates: one CA, and a certificate per host for
// both uses (each host dials and accepts), ECDSA P-256.

// Validity of what CA and Issue make. A CA outlives its hosts'
// certificates, which are made again (with the same CA) before they
// expire.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	HostValidity = 825 * 24 * time.Hour // the longest browsers accept; no browser is involved, but it is a known bound
)

// CA is a certificate authority that can issue host certificates.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// CertPEM and KeyPEM are its files' contents.
	CertPEM, KeyPEM []byte
}

// NewCA makes a CA named name, valid from now for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"ftckpt"}},
		NotBefore:             now.Add(-time.Hour), // hosts' clocks differ a little
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("making the CA: %w", err)
	}
	return caFrom(der, key)
}

func caFrom(der []byte, key *ecdsa.PrivateKey) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}, nil
}

// LoadCA reads a CA's certificate and key (ca.crt and ca.key of a
// directory `ftckpt certs init` made).
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s, %s: not PEM", certFile, keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", keyFile)
	}
	ca, err := caFrom(cb.Bytes, key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	if !ca.Cert.IsCA || !key.PublicKey.Equal(ca.Cert.PublicKey) {
		return nil, fmt.Errorf("%s and %s: not a CA and its key", certFile, keyFile)
	}
	return ca, nil
}

// Issue makes a certificate for host (a DNS name or an IP address), valid
// for validity, for both uses. Its names are host and the loopback names
// (localhost, 127.0.0.1, ::1), so that a host's processes can reach each
// other on loopback too. It returns the certificate's and the key's PEM.
func (ca *CA) Issue(host string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if host == "" {
		return nil, nil, errors.New("a certificate needs a host name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host, Organization: []string{"ftckpt"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	} else if host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate for %s: %w", host, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// Identity issues a certificate for host and returns it as an Identity
// (tests, and a local run's throwaway certificates).
func (ca *CA) Identity(host string, peerNames ...string) (*Identity, error) {
	certPEM, keyPEM, err := ca.Issue(host, HostValidity)
	if err != nil {
		return nil, err
	}
	return New(certPEM, keyPEM, ca.CertPEM, peerNames)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// Dir's files: ca.crt, ca.key, and HOST.crt and HOST.key per host.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// HostFiles are the certificate and key files of host in dir.
func HostFiles(dir, host string) (cert, key string) {
	base := filepath.Join(dir, fileName(host))
	return base + ".crt", base + ".key"
}

// fileName turns a host name or address into a file name (an IPv6
// address's colons are not welcome everywhere).
func fileName(host string) string {
	return strings.NewReplacer(":", "_", "/", "_", "%", "_").Replace(host)
}

// InitResult says what InitDir did.
type InitResult struct {
	NewCA bool     // the CA was made (else the one in the directory was used)
	Made  []string // hosts whose certificate was made
	Kept  []string // hosts that had one already, left as they were
}

// InitDir makes dir a small cluster's certificates: the CA (ca.crt, and
// ca.key, readable by its owner only) unless dir has one, and for each host
// that has none yet HOST.crt and HOST.key. It never overwrites a file, so
// run again with new hosts it adds them, signed by the same CA.
func InitDir(dir string, hosts []string) (InitResult, error) {
	var res InitResult
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	ca, err := LoadCA(caCert, caKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if exists(caCert) || exists(caKey) {
			return res, fmt.Errorf("%s: one of %s and %s is missing: move the other away to make a new CA", dir, CACertFile, CAKeyFile)
		}
		if ca, err = NewCA("ftckpt cluster CA "+time.Now().UTC().Format("2006-01-02T15:04:05Z"), CAValidity); err != nil {
			return res, err
		}
		if err := writeNew(caKey, ca.KeyPEM, 0o600); err != nil {
			return res, err
		}
		if err := writeNew(caCert, ca.CertPEM, 0o644); err != nil {
			return res, err
		}
		res.NewCA = true
	case err != nil:
		return res, fmt.Errorf("the CA in %s: %w", dir, err)
	}
	for _, h := range hosts {
		certFile, keyFile := HostFiles(dir, h)
		if exists(certFile) || exists(keyFile) {
			res.Kept = append(res.Kept, h)
			continue
		}
		certPEM, keyPEM, err := ca.Issue(h, HostValidity)
		if err != nil {
			return res, err
		}
		if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
			return res, err
		}
		if err := writeNew(certFile, certPEM, 0o644); err != nil {
			return res, err
		}
		res.Made = append(res.Made, h)
	}
	return res, nil
}

// Throwaway writes into dir (which should be private and temporary) a new
// CA's certificate and one host certificate for the loopback names, and
// returns their Files and the Identity they make: a local run's
// certificates, made for one run and thrown away after it. The CA's key is
// not kept.
func Throwaway(dir string) (Files, *Identity, error) {
	ca, err := NewCA("ftckpt throwaway CA", 24*time.Hour)
	if err != nil {
		return Files{}, nil, err
	}
	certPEM, keyPEM, err := ca.Issue("localhost", 24*time.Hour)
	if err != nil {
		return Files{}, nil, err
	}
	f := Files{CA: filepath.Join(dir, CACertFile)}
	f.Cert, f.Key = HostFiles(dir, "localhost")
	for _, w := range []struct {
		path string
		data []byte
		perm fs.FileMode
	}{{f.Key, keyPEM, 0o600}, {f.Cert, certPEM, 0o644}, {f.CA, ca.CertPEM, 0o644}} {
		if err := writeNew(w.path, w.data, w.perm); err != nil {
			return Files{}, nil, err
		}
	}
	id, err := New(certPEM, keyPEM, ca.CertPEM, nil)
	return f, id, err
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
