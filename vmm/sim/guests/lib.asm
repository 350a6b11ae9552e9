; lib: routines shared by the guests, assembled after each of them.
;
; Calling convention: arguments in r1..r4, result in r1 (and r2);
; r1..r7 may be clobbered, r8..r14 are preserved, sp is r15.

; puts writes the NUL-terminated string at r1 to the console.
puts:
	ld8 r2, [r1]
	cmp r2, 0
	je puts_done
	outb PORT_CONSOLE, r2
	add r1, r1, 1
	jmp puts
puts_done:
	ret

; putu writes r1 to the console in decimal.
putu:
	sub sp, sp, 32
	mov r2, sp
	call utoa
	mov r3, sp
putu_loop:
	cmp r1, 0
	je putu_done
	ld8 r4, [r3]
	outb PORT_CONSOLE, r4
	add r3, r3, 1
	sub r1, r1, 1
	jmp putu_loop
putu_done:
	add sp, sp, 32
	ret

; utoa writes r1 in decimal at r2 (at most 20 bytes) and returns the
; number of digits.
utoa:
	li r3, 1
	mov r4, r1
utoa_count:
	cmp r4, 10
	jb utoa_write
	divu r4, r4, 10
	add r3, r3, 1
	jmp utoa_count
utoa_write:
	add r4, r2, r3
utoa_digit:
	sub r4, r4, 1
	remu r5, r1, 10
	add r5, r5, '0'
	st8 [r4], r5
	divu r1, r1, 10
	cmp r1, 0
	jne utoa_digit
	mov r1, r3
	ret

; atou parses the r2 decimal digits at r1. It returns the value and a
; status: 0 ok, 1 not a number (empty, or a byte not a digit), 2 above
; INT64_MAX.
atou:
	li r3, 0
	cmp r2, 0
	je atou_nan
atou_loop:
	ld8 r4, [r1]
	sub r4, r4, '0'
	cmp r4, 9
	ja atou_nan
	li r5, 0x7fffffffffffffff
	sub r5, r5, r4
	divu r5, r5, 10
	cmp r3, r5
	ja atou_overflow
	mul r3, r3, 10
	add r3, r3, r4
	add r1, r1, 1
	sub r2, r2, 1
	cmp r2, 0
	jne atou_loop
	mov r1, r3
	li r2, 0
	ret
atou_nan:
	li r2, 1
	ret
atou_overflow:
	li r2, 2
	ret

; memcpy copies r3 bytes from r2 to r1.
memcpy:
	cmp r3, 0
	je memcpy_done
	ld8 r4, [r2]
	st8 [r1], r4
	add r1, r1, 1
	add r2, r2, 1
	sub r3, r3, 1
	jmp memcpy
memcpy_done:
	ret

; memeq returns 1 if the r3 bytes at r1 and r2 are equal, else 0.
memeq:
	cmp r3, 0
	je memeq_yes
	ld8 r4, [r1]
	ld8 r5, [r2]
	cmp r4, r5
	jne memeq_no
	add r1, r1, 1
	add r2, r2, 1
	sub r3, r3, 1
	jmp memeq
memeq_yes:
	li r1, 1
	ret
memeq_no:
	li r1, 0
	ret

; memzero zeroes r2 bytes at r1, which must be a multiple of 8.
memzero:
	li r3, 0
memzero_loop:
	cmp r2, 0
	je memzero_done
	st64 [r1], r3
	add r1, r1, 8
	sub r2, r2, 8
	jmp memzero_loop
memzero_done:
	ret

; net_send sends the r2 bytes at r1 as one frame.
net_send:
	li r3, MMIO_BASE
	st64 [r3+NET_TX_ADDR], r1
	st64 [r3+NET_TX_LEN], r2
	st64 [r3+NET_TX_SEND], r1
	ret

; spurious_isr counts an interrupt nobody expects.
spurious_isr:
	push r1
	ld64 r1, [spurious]
	add r1, r1, 1
	st64 [spurious], r1
	pop r1
	iret

	.align 8
spurious:
	.quad 0
newline:
	.asciz "\n"
