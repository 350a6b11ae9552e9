; tick: timer interrupts, memory work and a clock, the simvm twin of
; guests/progs/tick.c.
;
; It programs the periodic timer for param_period_ns and sleeps in
; "sti; hlt". The interrupt handler counts ticks and records each in a
; history page. For every tick it sees (coalescing those it missed), the
; main loop does param_work steps of an xorshift64 walk that adds into
; words of a param_work_pages-page work area, then reads the clock. At
; each multiple of param_every ticks it sends a frame (the 4 bytes
; "TICK", 4 zero bytes, the tick count and the clock as little-endian
; uint64s) and prints "tick N". After param_ticks ticks (0: never) it
; prints "tick: done N" and powers off with status 0.

	.org IVT_BASE
	.quad tick_isr				; IRQ_TIMER
	.quad spurious_isr			; IRQ_NET
	.quad spurious_isr, spurious_isr, spurious_isr, spurious_isr, spurious_isr, spurious_isr

	.org PARAMS
param_period_ns:	.quad 1000000
param_every:		.quad 10
param_work:		.quad 2000
param_work_pages:	.quad 16
param_ticks:		.quad 0

	.org ENTRY
start:
	li r1, banner
	call puts
	li r1, 0xfe				; the timer's line only
	outb PORT_PIC_MASK, r1
	ld64 r1, [param_period_ns]
	outl PORT_TIMER, r1
	ld64 r12, [param_every]			; r12: ticks between reports
	mov r13, r12				; r13: the next tick to report
	ld64 r11, [param_work_pages]
	shl r11, r11, 9
	sub r11, r11, 1				; r11: word index mask of the work area
	li r14, 0x9e3779b97f4a7c15		; r14: the walk's xorshift64 state
	li r8, 0				; r8: ticks handled
	sti

main:
	cli
	ld64 r1, [ticks]
	cmp r1, r8
	jne work
	sti					; the shadow keeps the tick out until hlt
	hlt
	jmp main

work:
	sti
	mov r8, r1
	ld64 r3, [param_work]
	li r4, end				; the work area: the pages after the image
work_loop:
	cmp r3, 0
	je work_done
	shl r6, r14, 13
	xor r14, r14, r6
	shr r6, r14, 7
	xor r14, r14, r6
	shl r6, r14, 17
	xor r14, r14, r6
	and r6, r14, r11
	shl r6, r6, 3
	add r6, r6, r4
	ld64 r7, [r6]
	add r7, r7, r14
	st64 [r6], r7
	sub r3, r3, 1
	jmp work_loop
work_done:
	inl r1, PORT_CLOCK_LO
	inl r2, PORT_CLOCK_HI
	shl r2, r2, 32
	or r10, r1, r2				; r10: the clock
	st64 [last_clock], r10
	cmp r8, r13
	jb check_limit
next_report:
	add r13, r13, r12
	cmp r13, r8
	jbe next_report
	st64 [frame_ticks], r8
	st64 [frame_clock], r10
	li r1, frame
	li r2, frame_end-frame
	call net_send
	li r1, tick_msg
	call puts
	mov r1, r8
	call putu
	li r1, newline
	call puts

check_limit:
	ld64 r1, [param_ticks]
	cmp r1, 0
	je main
	cmp r8, r1
	jb main
	cli
	li r1, done_msg
	call puts
	mov r1, r8
	call putu
	li r1, newline
	call puts
	li r1, 0
	outb PORT_POWER, r1

tick_isr:
	push r1
	push r2
	ld64 r1, [ticks]
	add r1, r1, 1
	st64 [ticks], r1
	and r2, r1, 511
	shl r2, r2, 3
	st64 [r2+tick_history], r1
	pop r2
	pop r1
	iret

	.align 8
ticks:		.quad 0
last_clock:	.quad 0
frame:		.space NET_ADDR_SIZE		; to the zero address: the host picks
		.ascii "TICK"
		.u32 0
frame_ticks:	.quad 0
frame_clock:	.quad 0
frame_end:
banner:		.asciz "tick: start\n"
tick_msg:	.asciz "tick "
done_msg:	.asciz "tick: done "

	.align PAGE_SIZE
tick_history:	.space PAGE_SIZE
