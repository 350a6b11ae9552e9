/*
 * 256 interrupt stubs, ISR_STUB_SIZE bytes apart starting at isr_stubs.
 * Each pushes a zero error code unless the CPU pushed one for its vector,
 * then the vector, and jumps to isr_common, which saves every GPR, calls
 * isr_dispatch(struct irq_frame *) (lib/idt.c) and returns with IRETQ.
 *
 * Stack alignment: the CPU aligns RSP to 16 before pushing its 5-word
 * frame; error code + vector + 15 GPRs make 17 more words, so RSP is
 * 16-byte aligned again at the call.
 */
	.set ISR_STUB_SIZE, 16

	.text
	.balign ISR_STUB_SIZE
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.balign ISR_STUB_SIZE
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	cld
	call isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

	.section .note.GNU-stack, "", @progbits
