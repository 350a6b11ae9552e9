package sim

import (
	"fmt"
	"strconv"
	"strings"
)

// eval evaluates an assembler expression (see Assemble) with syms.
func eval(s string, syms map[string]uint64) (uint64, error) {
	p := &exprParser{s: s, syms: syms}
	v := p.binary(0)
	p.space()
	if p.err == nil && p.i < len(p.s) {
		p.fail("unexpected %q", p.s[p.i:])
	}
	if p.err != nil {
		return 0, fmt.Errorf("expression %q: %w", s, p.err)
	}
	return v, nil
}

// evalNow is eval for the directives evaluated in pass 1, whose symbols
// must be defined above them.
func evalNow(s string, syms map[string]uint64) (uint64, error) {
	v, err := eval(s, syms)
	if err != nil {
		return 0, fmt.Errorf("%w (symbols here must be defined above)", err)
	}
	return v, nil
}

type exprParser struct {
	s    string
	i    int
	syms map[string]uint64
	err  error
}

func (p *exprParser) fail(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf(format, args...)
	}
}

func (p *exprParser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// binaryOps by precedence level, lowest first, as in C.
var binaryOps = [][]string{{"|"}, {"^"}, {"&"}, {"<<", ">>"}, {"+", "-"}, {"*", "/", "%"}}

// binary parses operators of precedence level and above.
func (p *exprParser) binary(level int) uint64 {
	if level == len(binaryOps) {
		return p.unary()
	}
	v := p.binary(level + 1)
	for p.err == nil {
		p.space()
		op := ""
		for _, o := range binaryOps[level] {
			if strings.HasPrefix(p.s[p.i:], o) {
				op = o
			}
		}
		if op == "" {
			return v
		}
		p.i += len(op)
		w := p.binary(level + 1)
		switch op {
		case "|":
			v |= w
		case "^":
			v ^= w
		case "&":
			v &= w
		case "<<":
			v <<= w & 63
		case ">>":
			v >>= w & 63
		case "+":
			v += w
		case "-":
			v -= w
		case "*":
			v *= w
		case "/", "%":
			if w == 0 {
				p.fail("division by zero")
				return 0
			}
			if op == "/" {
				v /= w
			} else {
				v %= w
			}
		}
	}
	return v
}

func (p *exprParser) unary() uint64 {
	p.space()
	if p.i >= len(p.s) {
		p.fail("missing operand")
		return 0
	}
	switch c := p.s[p.i]; {
	case c == '-':
		p.i++
		return -p.unary()
	case c == '+':
		p.i++
		return p.unary()
	case c == '~':
		p.i++
		return ^p.unary()
	case c == '(':
		p.i++
		v := p.binary(0)
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			p.fail("missing )")
			return 0
		}
		p.i++
		return v
	case c == '\'':
		return p.char()
	case c >= '0' && c <= '9':
		j := p.i
		for j < len(p.s) && isWordByte(p.s[j]) {
			j++
		}
		v, err := strconv.ParseUint(p.s[p.i:j], 0, 64)
		if err != nil {
			p.fail("bad number %q", p.s[p.i:j])
		}
		p.i = j
		return v
	case isWordByte(c):
		j := p.i
		for j < len(p.s) && isWordByte(p.s[j]) {
			j++
		}
		name := p.s[p.i:j]
		p.i = j
		v, ok := p.syms[name]
		if !ok {
			p.fail("undefined symbol %s", name)
		}
		return v
	default:
		p.fail("unexpected %q", p.s[p.i:])
		return 0
	}
}

// char parses a quoted character with Go's escapes.
func (p *exprParser) char() uint64 {
	for j := p.i + 2; j <= len(p.s); j++ {
		if p.s[j-1] != '\'' {
			continue
		}
		r, err := strconv.Unquote(p.s[p.i:j])
		if err == nil && len(r) == 1 {
			p.i = j
			return uint64(r[0])
		}
	}
	p.fail("bad character literal %q", p.s[p.i:])
	return 0
}

func isWordByte(c byte) bool {
	return c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
