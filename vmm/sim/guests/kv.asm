; kv: a key-value server on the network device, the simvm twin of
; guests/progs/kv.c. One request per frame, one reply frame per request,
; to the request's sender (the protocol is in client.go). The table is
; persisted to the disk (sectors 0 to DB_SECTORS-1) after every
; param_persist_every updates and loaded from it at boot; a disk without
; the table's magic starts empty.
; With param_journal > 0 every update also writes the table's first sector
; (magic, count, update count, the first entries) to sector DB_SECTORS +
; updates%journal: distinct writes, for tests that lose some. With
; param_flush = 1 it flushes the disk after every update, before replying.
; It sleeps in "sti; hlt" until the network interrupt.

	.equ KV_MAX_KEYS, 63
	.equ KV_ENTRY, 128			; one entry:
	.equ E_KLEN, 0				;   key length, 0 to KV_KEY_MAX
	.equ E_VLEN, 1				;   value length, 0 to KV_VAL_MAX
	.equ E_KEY, 8
	.equ E_VAL, 40
	.equ KV_KEY_MAX, 32
	.equ KV_VAL_MAX, 64
	.equ KV_REQ_MAX, 128
	.equ DB_MAGIC, 0x000000014244564b	; "KVDB", version 1
	.equ DB_SECTORS, KV_ENTRY*(KV_MAX_KEYS+1)/DISK_SECTOR_SIZE
	.equ RX_SLOTS, 8

	.org IVT_BASE
	.quad spurious_isr			; IRQ_TIMER
	.quad net_isr				; IRQ_NET
	.quad spurious_isr, spurious_isr, spurious_isr, spurious_isr, spurious_isr, spurious_isr

	.org PARAMS
param_persist_every:	.quad 4
param_journal:		.quad 0			; >0: also write the table's first sector after every update, to sector DB_SECTORS + updates%journal
param_flush:		.quad 0			; 1: flush the disk after every update, before replying

	.org ENTRY
start:
	li r1, banner
	call puts
	li r1, DISK_READ
	call db_transfer
	inb r1, PORT_DISK_CMD
	cmp r1, DISK_OK
	jne disk_failed
	ld64 r1, [db_magic]
	li r2, DB_MAGIC
	cmp r1, r2
	jne fresh
	ld64 r1, [db_count]
	cmp r1, KV_MAX_KEYS
	ja fresh
	li r1, loaded_msg
	call puts
	ld64 r1, [db_count]
	call putu
	li r1, keys_msg
	call puts
	jmp net_up
fresh:
	li r1, db
	li r2, DB_SECTORS*DISK_SECTOR_SIZE
	call memzero
	li r1, DB_MAGIC
	st64 [db_magic], r1
	li r1, fresh_msg
	call puts

net_up:
	li r9, MMIO_BASE
	li r1, rx_area
	st64 [r9+NET_RX_BASE], r1
	li r1, RX_SLOTS
	st64 [r9+NET_RX_SLOTS], r1
	st64 [r9+NET_RX_TAIL], r1		; post every slot
	li r1, 0xfd				; the network's line only
	outb PORT_PIC_MASK, r1
	li r8, 0				; r8: frames consumed
	sti

main:
	li r9, MMIO_BASE
	cli
	ld64 r1, [r9+NET_RX_HEAD]
	cmp r1, r8
	jne receive
	sti
	hlt
	jmp main
receive:
	sti
	and r2, r8, RX_SLOTS-1
	mul r2, r2, NET_SLOT_SIZE
	li r3, rx_area
	add r2, r2, r3
	ld32 r3, [r2]
	add r1, r2, NET_SLOT_DATA
	cmp r3, NET_ADDR_SIZE
	jb consumed				; no sender's address: nobody to answer
	push r1
	push r3
	mov r2, r1
	li r1, txaddr				; the reply goes to the request's sender
	li r3, NET_ADDR_SIZE
	call memcpy
	pop r2
	pop r1
	add r1, r1, NET_ADDR_SIZE
	sub r2, r2, NET_ADDR_SIZE
	call handle
	add r2, r1, NET_ADDR_SIZE
	li r1, txaddr
	call net_send
consumed:
	add r8, r8, 1
	add r1, r8, RX_SLOTS
	li r9, MMIO_BASE
	st64 [r9+NET_RX_TAIL], r1		; post the slot again
	jmp main

disk_failed:
	li r1, disk_msg
	call puts
	li r1, 1
	outb PORT_POWER, r1

net_isr:
	push r1
	ld64 r1, [net_irqs]
	add r1, r1, 1
	st64 [net_irqs], r1
	pop r1
	iret

; db_transfer moves the table between db and the disk: r1 is DISK_READ or
; DISK_WRITE.
db_transfer:
	li r2, db
	outl PORT_DISK_ADDR, r2
	li r2, 0
	outl PORT_DISK_SECTOR, r2
	li r2, DB_SECTORS
	outl PORT_DISK_COUNT, r2
	outb PORT_DISK_CMD, r1
	ret

; handle executes the request of r2 bytes at r1, leaves the reply in
; txbuf and returns its length. r10 is the reply's cursor, r11 and r12
; the unparsed rest of the request, r13 and r14 the key.
handle:
	push r10
	push r11
	push r12
	push r13
	push r14
	mov r11, r1
	mov r12, r2
	ld64 r1, [seq]
	add r1, r1, 1
	st64 [seq], r1
	li r2, txbuf
	call utoa
	li r10, txbuf
	add r10, r10, r1
	li r1, ' '
	st8 [r10], r1
	add r10, r10, 1
	cmp r12, KV_REQ_MAX
	ja err_too_long
	cmp r12, 0
	je err_syntax
	add r1, r11, r12			; strip one "\n" or "\r\n"
	ld8 r2, [r1-1]
	cmp r2, '\n'
	jne parse_cmd
	sub r12, r12, 1
	cmp r12, 0
	je parse_cmd
	ld8 r2, [r1-2]
	cmp r2, '\r'
	jne parse_cmd
	sub r12, r12, 1
parse_cmd:
	li r3, cmd_get
	li r4, 4
	call take_prefix
	cmp r1, 0
	jne do_get
	li r3, cmd_set
	li r4, 4
	call take_prefix
	cmp r1, 0
	jne do_set
	li r3, cmd_incr
	li r4, 5
	call take_prefix
	cmp r1, 0
	jne do_incr
	jmp err_syntax

do_get:
	call take_key
	cmp r1, 0
	jne err_bad_key
	cmp r12, 0
	jne err_syntax
	call find
	cmp r1, 0
	jne reply_value
	li r1, notfound_msg
	call append_str
	jmp reply_done

do_set:
	call take_key
	cmp r1, 0
	jne err_bad_key
	cmp r12, 0
	je err_syntax
	add r11, r11, 1				; the space after the key
	sub r12, r12, 1
	cmp r12, 0
	je err_bad_value
	cmp r12, KV_VAL_MAX
	ja err_bad_value
	call find
	cmp r1, 0
	jne set_entry
	call insert
	cmp r1, 0
	je err_full
set_entry:
	st8 [r1+E_VLEN], r12
	add r1, r1, E_VAL
	mov r2, r11
	mov r3, r12
	call memcpy
	call updated
	li r1, ok_msg
	call append_str
	jmp reply_done

do_incr:
	call take_key
	cmp r1, 0
	jne err_bad_key
	cmp r12, 0
	jne err_syntax
	call find
	cmp r1, 0
	jne incr_entry
	call insert
	cmp r1, 0
	je err_full
incr_entry:
	mov r13, r1				; r13: the entry (the key is done with)
	ld8 r2, [r13+E_VLEN]
	li r1, 0				; an empty value is 0
	cmp r2, 0
	je incr_add
	add r1, r13, E_VAL
	call atou
	cmp r2, 1
	je err_not_number
	cmp r2, 2
	je err_overflow
incr_add:
	li r2, 0x7fffffffffffffff
	cmp r1, r2
	je err_overflow
	add r1, r1, 1
	add r2, r13, E_VAL
	call utoa
	st8 [r13+E_VLEN], r1
	call updated
	mov r1, r13
	jmp reply_value

err_too_long:
	li r1, too_long_msg
	jmp reply_err
err_syntax:
	li r1, syntax_msg
	jmp reply_err
err_bad_key:
	li r1, bad_key_msg
	jmp reply_err
err_bad_value:
	li r1, bad_value_msg
	jmp reply_err
err_full:
	li r1, full_msg
	jmp reply_err
err_not_number:
	li r1, not_number_msg
	jmp reply_err
err_overflow:
	li r1, overflow_msg
reply_err:
	mov r13, r1
	li r1, err_msg
	call append_str
	mov r1, r13
	call append_str
	jmp reply_done

; reply_value appends "VALUE " and the value of the entry at r1.
reply_value:
	mov r13, r1
	li r1, value_msg
	call append_str
	add r1, r13, E_VAL
	ld8 r2, [r13+E_VLEN]
	call append_bytes
reply_done:
	li r1, txbuf
	sub r1, r10, r1
	pop r14
	pop r13
	pop r12
	pop r11
	pop r10
	ret

; take_prefix: if the request's rest starts with the r4 bytes at r3, skip
; them and return 1, else return 0.
take_prefix:
	cmp r12, r4
	jb take_prefix_no
	push r4
	mov r1, r11
	mov r2, r3
	mov r3, r4
	call memeq
	pop r4
	cmp r1, 0
	je take_prefix_no
	add r11, r11, r4
	sub r12, r12, r4
	li r1, 1
	ret
take_prefix_no:
	li r1, 0
	ret

; take_key takes the key (up to a space or the end) from the request's
; rest into r13 and r14 and returns 0, or 1 if its length is not 1 to
; KV_KEY_MAX.
take_key:
	mov r13, r11
	li r14, 0
take_key_loop:
	cmp r14, r12
	je take_key_end
	add r1, r11, r14
	ld8 r1, [r1]
	cmp r1, ' '
	je take_key_end
	add r14, r14, 1
	jmp take_key_loop
take_key_end:
	add r11, r11, r14
	sub r12, r12, r14
	li r1, 1
	cmp r14, 0
	je take_key_done
	cmp r14, KV_KEY_MAX
	ja take_key_done
	li r1, 0
take_key_done:
	ret

; find returns the entry of the key in r13 and r14, or 0.
find:
	li r6, entries
	ld64 r7, [db_count]
	mul r7, r7, KV_ENTRY
	add r7, r7, r6
find_loop:
	cmp r6, r7
	je find_none
	ld8 r1, [r6+E_KLEN]
	cmp r1, r14
	jne find_next
	add r1, r6, E_KEY
	mov r2, r13
	mov r3, r14
	call memeq
	cmp r1, 0
	jne find_found
find_next:
	add r6, r6, KV_ENTRY
	jmp find_loop
find_found:
	mov r1, r6
	ret
find_none:
	li r1, 0
	ret

; insert adds the key in r13 and r14 with an empty value and returns its
; entry, or 0 if the table is full.
insert:
	ld64 r6, [db_count]
	cmp r6, KV_MAX_KEYS
	jae insert_full
	add r7, r6, 1
	st64 [db_count], r7
	mul r6, r6, KV_ENTRY
	li r7, entries
	add r6, r6, r7
	st8 [r6+E_KLEN], r14
	li r1, 0
	st8 [r6+E_VLEN], r1
	add r1, r6, E_KEY
	mov r2, r13
	mov r3, r14
	call memcpy
	mov r1, r6
	ret
insert_full:
	li r1, 0
	ret

; updated counts an update and persists the table every
; param_persist_every updates.
updated:
	ld64 r1, [db_updates]
	add r1, r1, 1
	st64 [db_updates], r1
	ld64 r2, [param_journal]
	cmp r2, 0
	je updated_table
	remu r1, r1, r2				; the journal: one sector per update,
	add r1, r1, DB_SECTORS			; each holding the update count
	li r2, db
	outl PORT_DISK_ADDR, r2
	outl PORT_DISK_SECTOR, r1
	li r2, 1
	outl PORT_DISK_COUNT, r2
	li r1, DISK_WRITE
	outb PORT_DISK_CMD, r1
updated_table:
	ld64 r1, [unsaved]
	add r1, r1, 1
	st64 [unsaved], r1
	ld64 r2, [param_persist_every]
	cmp r1, r2
	jb updated_done
	li r1, 0
	st64 [unsaved], r1
	li r1, DISK_WRITE
	call db_transfer
updated_done:
	ld64 r1, [param_flush]
	cmp r1, 0
	je updated_ret
	li r1, DISK_FLUSH
	outb PORT_DISK_CMD, r1
updated_ret:
	ret

; append_str appends the NUL-terminated string at r1 to the reply.
append_str:
	ld8 r2, [r1]
	cmp r2, 0
	je append_done
	st8 [r10], r2
	add r10, r10, 1
	add r1, r1, 1
	jmp append_str
append_done:
	ret

; append_bytes appends the r2 bytes at r1 to the reply.
append_bytes:
	cmp r2, 0
	je append_done
	ld8 r3, [r1]
	st8 [r10], r3
	add r10, r10, 1
	add r1, r1, 1
	sub r2, r2, 1
	jmp append_bytes

	.align 8
seq:		.quad 0				; the last reply's number
unsaved:	.quad 0				; updates since the table was persisted
net_irqs:	.quad 0
cmd_get:	.ascii "GET "
cmd_set:	.ascii "SET "
cmd_incr:	.ascii "INCR "
banner:		.asciz "kv: start\n"
loaded_msg:	.asciz "kv: loaded "
keys_msg:	.asciz " keys\n"
fresh_msg:	.asciz "kv: new table\n"
disk_msg:	.asciz "kv: FAILED: disk read\n"
ok_msg:		.asciz "OK"
value_msg:	.asciz "VALUE "
notfound_msg:	.asciz "NOTFOUND"
err_msg:	.asciz "ERR "
too_long_msg:	.asciz "too long"
syntax_msg:	.asciz "syntax"
bad_key_msg:	.asciz "bad key"
bad_value_msg:	.asciz "bad value"
full_msg:	.asciz "full"
not_number_msg:	.asciz "not a number"
overflow_msg:	.asciz "overflow"
	.align 8
txaddr:		.space NET_ADDR_SIZE		; the reply frame: address, then txbuf
txbuf:		.space 256

	.align PAGE_SIZE
db:						; the table, as on the disk
db_magic:	.quad 0
db_count:	.quad 0				; entries in use, in order
db_updates:	.quad 0
		.space KV_ENTRY-24
entries:	.space KV_MAX_KEYS*KV_ENTRY

	.align PAGE_SIZE
rx_area:	.space RX_SLOTS*NET_SLOT_SIZE
