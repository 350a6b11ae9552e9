// Package cow copies pages of a memory mapping as they are at one moment
// without keeping the mapping's writers stopped for the copy. The pages are
// write-protected with userfaultfd; each is then copied before its first
// write after that moment (the writer waits for the copy, in the kernel) or
// in the background, whichever comes first. QEMU's background snapshot
// does the same for a whole snapshot; the checkpoint primary does it for an
// epoch's dirty pages, so that the guest resumes before they are copied.
//
// A write to a protected page by any thread — a vCPU inside KVM_RUN (KVM
// faults the page in with the writer's page tables), a device goroutine
// writing guest memory — waits until the page is copied and unprotected.
// The region's own goroutines do the copying and never write to the
// mapping, so they cannot wait on themselves.
package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// PageSize is the unit of protection and copying.
const PageSize = 4096

// HugePageSize is the reach of one of the host's transparent huge pages on
// x86-64 (a page-middle-directory entry), and the most a snapshot copies
// and unprotects at once: its pages within one aligned HugePageSize (a
// piece). Write-protecting a huge page is one entry to change, not 512
// (protecting 8,192 pages of guest memory took 0.9–1.0 ms in 4 KiB pages on
// a nested host, 0.12–0.18 ms in huge pages), and it stays huge only if it
// is unprotected whole: unprotecting part of it splits it into 4 KiB
// pages for good. A piece is also what a write waits for: a guest writing
// pages in order waits once per piece, not once per page (a wait costs
// 15–30 µs on a nested host, the copy of a page under 1).
const HugePageSize = 2 << 20

const piecePages = HugePageSize / PageSize

// ErrUnsupported is Register's error where userfaultfd write protection is
// unavailable: a kernel before 5.7, or userfaultfd forbidden (a seccomp
// filter, vm.unprivileged_userfaultfd for a user without CAP_SYS_PTRACE).
var ErrUnsupported = errors.New("userfaultfd write protection is unavailable")

// A Region is a mapping registered for write-protect faults, taking one
// Snapshot at a time.
type Region struct {
	mem  []byte
	base uint64
	fd   int // the userfaultfd
	stop int // an eventfd, written by Close to end the fault handler
	// handled is closed when the fault handler returns.
	handled chan struct{}

	// mu serializes Snapshot and Close, and protects closed.
	mu     sync.Mutex
	closed bool
	// cur is the snapshot under way, nil when none: how the fault handler
	// finds the page a writer waits for.
	cur atomic.Pointer[Snapshot]
	// answering is held by the fault handler while it answers a fault
	// (from reading cur to unprotecting) and by Snapshot while it sets cur
	// and protects. A fault can be answered long after it was queued — the
	// background copier may have unprotected the page and woken its writer
	// meanwhile, and the snapshot may have ended — so without it the
	// handler could unprotect, for a snapshot it found done or for the one
	// before, a page the next snapshot has just protected and not copied:
	// the guest's writes to it would then reach the page before its copy.
	answering sync.Mutex
	// failed is set by release: the region takes no snapshot again (its
	// fault handler may be gone).
	failed atomic.Bool
}

// Register prepares mem (page-aligned, anonymous or shared memory) for
// snapshots. Nothing is protected until Snapshot. Close releases it.
func Register(mem []byte) (*Region, error) {
	if len(mem) == 0 || len(mem)%PageSize != 0 || addressOf(mem)%PageSize != 0 {
		return nil, fmt.Errorf("registering %d bytes for write protection: not whole pages", len(mem))
	}
	// Not UFFD_USER_MODE_ONLY: KVM's own faults on guest memory are kernel
	// faults, and they are the ones that matter.
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("%w: userfaultfd: %w", ErrUnsupported, errno)
	}
	r := &Region{mem: mem, base: addressOf(mem), fd: int(fd), stop: -1, handled: make(chan struct{})}
	if err := r.setUp(); err != nil {
		unix.Close(r.fd)
		if r.stop >= 0 {
			unix.Close(r.stop)
		}
		return nil, err
	}
	go r.handleFaults()
	return r, nil
}

// setUp negotiates write protection, registers the mapping and makes the
// handler's stop event.
func (r *Region) setUp() error {
	features, err := apiHandshake(r.fd, UFFD_FEATURE_PAGEFAULT_FLAG_WP)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if features&UFFD_FEATURE_PAGEFAULT_FLAG_WP == 0 {
		return fmt.Errorf("%w: the kernel lacks UFFD_FEATURE_PAGEFAULT_FLAG_WP", ErrUnsupported)
	}
	ioctls, err := register(r.fd, r.base, uint64(len(r.mem)), UFFDIO_REGISTER_MODE_WP)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if ioctls&(1<<_UFFDIO_WRITEPROTECT) == 0 {
		return fmt.Errorf("%w: UFFDIO_WRITEPROTECT is not offered for this memory", ErrUnsupported)
	}
	if r.stop, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	return nil
}

// Close waits for the snapshot under way to finish, then releases the
// region (its pages are all unprotected by then). The mapping stays.
func (r *Region) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if s := r.cur.Load(); s != nil {
		s.Start()
		<-s.done
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, err := unix.Write(r.stop, one[:])
	<-r.handled
	return errors.Join(err, unix.Close(r.fd), unix.Close(r.stop))
}

// protect write-protects (on) or unprotects n pages from pfn; unprotecting
// lets the writers waiting on them go on.
func (r *Region) protect(pfn, n uint64, on bool) error {
	return writeProtect(r.fd, r.base+pfn*PageSize, n*PageSize, on)
}

// handleFaults answers write-protect faults until Close: it copies the
// page a writer waits for (and the next ones of its run) into the snapshot
// under way and unprotects them. If it cannot read faults any more, it
// unprotects the whole mapping so that no writer waits forever, and fails
// the snapshot under way.
func (r *Region) handleFaults() {
	defer close(r.handled)
	fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}, {Fd: int32(r.stop), Events: unix.POLLIN}}
	buf := make([]byte, 64*msgSize)
	for {
		_, err := unix.Poll(fds, -1)
		if err == nil && fds[1].Revents != 0 {
			return
		}
		var n int
		if err == nil {
			n, err = unix.Read(r.fd, buf)
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			r.release(fmt.Errorf("reading write-protect faults: %w", err))
			return
		}
		for m := buf[:n]; len(m) >= msgSize; m = m[msgSize:] {
			if m[msgEventOffset] != UFFD_EVENT_PAGEFAULT || binary.NativeEndian.Uint64(m[msgFaultFlagsOffset:])&UFFD_PAGEFAULT_FLAG_WP == 0 {
				continue // registered for write protection only: nothing else comes
			}
			pfn := (binary.NativeEndian.Uint64(m[msgFaultAddrOffset:]) - r.base) / PageSize
			r.answering.Lock()
			err := r.fault(pfn)
			r.answering.Unlock()
			if err != nil {
				r.release(err)
				return
			}
		}
	}
}

// fault answers a writer waiting on page pfn. Precondition: r.answering
// is held.
func (r *Region) fault(pfn uint64) error {
	s := r.cur.Load()
	if testHookAnswering != nil {
		testHookAnswering()
	}
	if s != nil {
		if handled, err := s.copyForWriter(pfn); handled || err != nil {
			return err
		}
	}
	// Not a page of the snapshot under way: the background copier has
	// unprotected it since the fault was queued, and no snapshot can
	// protect it again while r.answering is held. Make sure and wake.
	return r.protect(pfn, 1, false)
}

// testHookAnswering, if set, runs as the fault handler begins to answer
// a fault: a test slows the handler with it, as a busy host does.
var testHookAnswering func()

// release unprotects the whole mapping after a failure of the fault
// handler, failing the snapshot under way (its pages may now change before
// they are copied).
func (r *Region) release(err error) {
	r.failed.Store(true)
	if s := r.cur.Load(); s != nil {
		s.fail(err)
	}
	if uerr := r.protect(0, uint64(len(r.mem))/PageSize, false); uerr != nil {
		// Writers may wait forever: nothing else can be done from here.
		panic(fmt.Sprintf("cow: %v, and unprotecting the mapping failed: %v", err, uerr))
	}
}

// Page states in a Snapshot.
const (
	pending uint32 = iota // not copied yet
	claimed               // being copied by the copier or the fault handler
	copied                // in dst
)

// piece is pages [pfn, pfn+n) of the mapping, at page at of dst: a run of
// a snapshot's pages within one aligned HugePageSize of the mapping. A
// piece is copied and unprotected whole.
type piece struct{ pfn, n, at uint64 }

// Piece states in a Snapshot.
const (
	protected    uint32 = iota
	unprotecting        // its pages all copied, by the copier or the fault handler
	unprotected
)

// A Snapshot is pages of a Region being copied as they were when it was
// taken.
type Snapshot struct {
	r      *Region
	dst    []byte
	pieces []piece
	state  []atomic.Uint32 // by page of dst: pending, claimed, copied
	freed  []atomic.Uint32 // by piece: protected, unprotecting, unprotected
	began  time.Time

	// start is closed by Start: the background copier waits for it, so
	// that it does not take a core from the rest of the pause.
	start     chan struct{}
	startOnce sync.Once
	done      chan struct{} // closed when every page is copied and unprotected
	// errMu protects err, set by fail; read after done.
	errMu  sync.Mutex
	err    error
	took   time.Duration // set before done closes
	faults atomic.Uint64
}

// Snapshot write-protects pages pfns (ascending) of the mapping for a copy
// into dst, page i of pfns at dst[i*PageSize:]: each is copied before it is
// next written, or by a background copier once Start (or Wait) is called —
// after the writers are let go, so that it does not compete with what is
// left of the pause. Wait says when all are in dst. A snapshot still under
// way is started and waited for first.
// Precondition: no thread writes to the mapping during the call (the guest
// is paused); writers may go on as soon as it returns. On an error nothing
// is protected and nothing is written to dst.
func (r *Region) Snapshot(pfns []uint64, dst []byte) (*Snapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("snapshot of a closed region")
	}
	if r.failed.Load() {
		return nil, errors.New("snapshot of a region whose write protection failed (see the snapshot that failed)")
	}
	if s := r.cur.Load(); s != nil {
		s.Start()
		<-s.done
	}
	if len(dst) < len(pfns)*PageSize {
		return nil, fmt.Errorf("snapshot of %d pages into %d bytes", len(pfns), len(dst))
	}
	s := &Snapshot{r: r, dst: dst, state: make([]atomic.Uint32, len(pfns)), began: time.Now(),
		start: make(chan struct{}), done: make(chan struct{})}
	pages := uint64(len(r.mem)) / PageSize
	for i, pfn := range pfns {
		if pfn >= pages || (i > 0 && pfn <= pfns[i-1]) {
			return nil, fmt.Errorf("snapshot: page %d (the %d-th) is beyond the mapping's %d pages or out of order", pfn, i, pages)
		}
		if k := len(s.pieces) - 1; k >= 0 && s.pieces[k].pfn+s.pieces[k].n == pfn && r.pieceOf(pfn) == r.pieceOf(pfn-1) {
			s.pieces[k].n++
		} else {
			s.pieces = append(s.pieces, piece{pfn: pfn, n: 1, at: uint64(i)})
		}
	}
	s.freed = make([]atomic.Uint32, len(s.pieces))
	r.answering.Lock()
	defer r.answering.Unlock()
	r.cur.Store(s) // before protecting: a fault finds what it must copy
	// Each run of adjacent pieces in one call: KVM drops its mappings of
	// the range at each call, so fewer, larger calls are cheaper.
	for k := 0; k < len(s.pieces); {
		first, end := s.pieces[k], k+1
		for end < len(s.pieces) && s.pieces[end].pfn == s.pieces[end-1].pfn+s.pieces[end-1].n {
			end++
		}
		last := s.pieces[end-1]
		if err := r.protect(first.pfn, last.pfn+last.n-first.pfn, true); err != nil {
			s.abandon(s.pieces[:k])
			return nil, err
		}
		k = end
	}
	go s.copyAll()
	return s, nil
}

// pieceOf is the number of the aligned HugePageSize of the address space
// that holds page pfn of the mapping.
func (r *Region) pieceOf(pfn uint64) uint64 {
	return (r.base/PageSize + pfn) / piecePages
}

// Start lets the background copier go. Idempotent.
func (s *Snapshot) Start() { s.startOnce.Do(func() { close(s.start) }) }

// Wait starts the background copier if need be and returns once every page
// is in dst, with the error that spoiled the copy, if one did.
func (s *Snapshot) Wait() error {
	s.Start()
	<-s.done
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// Took is how long the pages took to be copied and unprotected, from
// Snapshot (not from Start). Call after Wait.
func (s *Snapshot) Took() time.Duration { return s.took }

// Faults is how many writes waited for a page of the snapshot.
func (s *Snapshot) Faults() uint64 { return s.faults.Load() }

func (s *Snapshot) fail(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// abandon undoes a Snapshot that could not protect all its pieces: it
// unprotects those it did and withdraws s, before anything was written to
// dst. Precondition: s.r.answering is held since s became r.cur, so the
// fault handler never sees s, and s's copier has not started.
func (s *Snapshot) abandon(protected []piece) {
	for _, p := range protected {
		if err := s.r.protect(p.pfn, p.n, false); err != nil {
			panic(fmt.Sprintf("cow: unprotecting pages %d+%d of an abandoned snapshot: %v", p.pfn, p.n, err))
		}
	}
	s.r.cur.Store(nil)
	close(s.done)
}

// copyAll is the background copier: it copies every page not yet copied,
// a piece at a time, and unprotects each piece once all its pages are in
// dst (whoever copied them), unless the fault handler has.
func (s *Snapshot) copyAll() {
	<-s.start
	for k := range s.pieces {
		s.copyPiece(k)
		if err := s.unprotectPiece(k); err != nil {
			s.r.release(fmt.Errorf("unprotecting copied pages: %w", err))
		}
	}
	s.took = time.Since(s.began)
	s.r.cur.CompareAndSwap(s, nil)
	close(s.done)
}

// copyForWriter copies the piece that holds page pfn, the writer's page
// first, and unprotects it, for a writer waiting on pfn. It reports false
// if pfn is not a page of the snapshot.
func (s *Snapshot) copyForWriter(pfn uint64) (bool, error) {
	k := sort.Search(len(s.pieces), func(k int) bool { return s.pieces[k].pfn+s.pieces[k].n > pfn })
	if k == len(s.pieces) || s.pieces[k].pfn > pfn {
		return false, nil
	}
	p := s.pieces[k]
	s.claimAndCopy(p.at+(pfn-p.pfn), pfn)
	s.copyPiece(k)
	s.faults.Add(1)
	return true, s.unprotectPiece(k)
}

// copyPiece copies the pages of piece k that no other goroutine has
// claimed, and returns once all of its pages are in dst.
func (s *Snapshot) copyPiece(k int) {
	p := s.pieces[k]
	for i := p.at; i < p.at+p.n; i++ {
		s.claimAndCopy(i, p.pfn+(i-p.at))
	}
	for i := p.at; i < p.at+p.n; i++ {
		s.waitCopied(i)
	}
}

// unprotectPiece unprotects piece k, whose pages are all in dst, unless
// another goroutine has (or is): the writers waiting on it go on. Once
// only: each call also makes KVM drop its mappings of the range, which
// the guest is writing by then. It returns once the piece is unprotected.
func (s *Snapshot) unprotectPiece(k int) error {
	if !s.freed[k].CompareAndSwap(protected, unprotecting) {
		for s.freed[k].Load() != unprotected {
			runtime.Gosched() // one UFFDIO_WRITEPROTECT
		}
		return nil
	}
	p := s.pieces[k]
	err := s.r.protect(p.pfn, p.n, false)
	s.freed[k].Store(unprotected)
	return err
}

// claimAndCopy copies page i of the snapshot, the mapping's page pfn, into
// dst unless another goroutine has claimed it.
func (s *Snapshot) claimAndCopy(i, pfn uint64) {
	if !s.state[i].CompareAndSwap(pending, claimed) {
		return
	}
	copy(s.dst[i*PageSize:(i+1)*PageSize], s.r.mem[pfn*PageSize:])
	s.state[i].Store(copied)
}

// waitCopied waits for page i, claimed by another goroutine, to be copied:
// a copy of one page, so a yield or two.
func (s *Snapshot) waitCopied(i uint64) {
	for s.state[i].Load() != copied {
		runtime.Gosched()
	}
}
