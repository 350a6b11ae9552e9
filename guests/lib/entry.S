/*
 * _start: the ELF entry point, on every vCPU. The VMM has set up long mode,
 * RDI = vCPU index, RSI = boot-info GPA, RSP = this vCPU's stack top
 * (include/bootinfo.h). Align the stack, clear the direction flag and the
 * frame pointer, and call rt_main (lib/rt.c), which checks the boot info,
 * runs guest_main and powers off. It never returns; if it did, halt.
 */
	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	cld
	xorl %ebp, %ebp
	andq $-16, %rsp
	call rt_main
1:	cli
	hlt
	jmp 1b
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
