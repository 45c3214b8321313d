/*
 * privmem trace player: 32-bit protected-mode guest, no paging, no firmware.
 * Assembled with `python -m privmem.vmm.guest.assemble` (GNU as --32 + objcopy -O binary).
 * Loaded at CODE_GPA (vmm/layout.py; LOAD_ADDR below): ops are dispatched through a jump
 * table of absolute addresses computed as `label - _start + LOAD_ADDR` (no relocations);
 * every other branch is relative.
 *
 * Every guest instruction counts: on the project's host (nested kvm_pvm) this guest is
 * emulated at ~0.6-1.7 us per instruction, and guest work drowns the costs the machine
 * measures (conversions, discards, re-faults).  So the VMM does what it can when it encodes
 * the ops (vmm/program.py): the address through the op's view, the pattern replicated into a
 * dword, the PSC operation bits, a separate kind for one-page conversions and for exact
 * (full) data checks; the player only moves them.
 *
 * WRITE and VERIFY are SAMPLED by default: per 4 KiB page, 8 bytes at offset 0 and 8 bytes at
 * offset 4088 (two dword pairs).  That tells a page holding the pattern from a page that was
 * discarded (reads zero) or holds another pattern, at 7 (write) or 11 (verify) instructions a
 * page instead of 1024 dword operations.  K_WRITE_FULL / K_VERIFY_FULL (Machine
 * data_check="full") touch every byte.  TOUCH is one byte read per page.  The device side
 * (DMA_IN / DMA_OUT) is done by the VMM on the host, byte-exact (DMA_OUT over the sample's
 * bytes in sampled mode: the only bytes a sampled WRITE defines).
 *
 * Entry state (set by the VMM through KVM_SET_REGS/KVM_SET_SREGS, flat 4 GiB segments):
 *   esi = first op (16-byte records, in the SHARED view of the reserved region)
 *   ebx = this vCPU's comm page (SHARED view): PSC request, status word, mailbox, params
 *   ebp = shared bit (not needed: records carry view-resolved addresses; used as scratch)
 *   esp = top of this vCPU's private stack
 * esi and ebx are preserved for the whole run.
 *
 * Op record: +0 u8 kind, +1 u8 flags, +2 u8 pattern, +3 u8 0, +4 u32 addr, +8 u32 size, +12 u32 arg
 *   addr: guest address (write/verify/touch: through the op's view, i.e. gpa | shared bit for
 *         the shared view; convert/dma: the gpa)
 *   arg:  write/verify: pattern byte * 0x01010101; convert: PSC operation bits (entry high
 *         dword); exits: the number of OUTs
 */
        .code32
        .text
        .globl _start

        .equ LOAD_ADDR, 0x1000
        .equ OP_SIZE, 16
        .equ K_END, 0
        .equ K_CONVERT, 1
        .equ K_WRITE, 2
        .equ K_VERIFY, 3
        .equ K_TOUCH, 4
        .equ K_DMA_IN, 5
        .equ K_DMA_OUT, 6
        .equ K_EXITS, 7
        .equ K_CONVERT_PAGE, 8
        .equ K_WRITE_FULL, 9
        .equ K_VERIFY_FULL, 10
        .equ K_COUNT, 11

        .equ PORT_DONE, 0xe0
        .equ PORT_PSC, 0xe1
        .equ PORT_DMA_IN, 0xe2
        .equ PORT_DMA_OUT, 0xe3
        .equ PORT_VERIFY_FAIL, 0xe4
        .equ PORT_NOP, 0xe5

        .equ PSC_HEADER, 0
        .equ PSC_ENTRIES, 8
        .equ PSC_MAX_ENTRIES, 253
        .equ PSC_STATUS, 2032
        .equ PSC_STATUS_RETRY, 2
        .equ PSC_SIZE_2M, 1 << 24             /* pagesize, bit 56, as seen in the high dword */
        .equ MB_GPA, 0x800
        .equ MB_SIZE, 0x804
        .equ MB_PATTERN, 0x808
        .equ MB_ACTUAL, 0x80c
        .equ MB_COUNT, 0x810
        .equ PARAM_VCPU, 0xf04

        .equ SAMPLE_LAST, 4088                /* the second sampled qword of a page */

/* next record, dispatched through the table: 3 instructions between ops */
        .macro NEXT
        addl $OP_SIZE, %esi
        movzbl (%esi), %eax
        jmp *(dispatch - _start + LOAD_ADDR)(,%eax,4)
        .endm

_start:
        cld
        movzbl (%esi), %eax
        jmp *(dispatch - _start + LOAD_ADDR)(,%eax,4)

op_end:                                 /* K_END and anything unknown */
        movl PARAM_VCPU(%ebx), %eax
        outl %eax, $PORT_DONE
        hlt
        jmp op_end

/* One 4 KiB page: a one-entry PSC request.  The VMM writes the status word on every PSC
 * exit (0 ok, 1 invalid: counted by the VMM, go on; 2 retry: ring again). */
op_convert_page:
        movl 4(%esi), %eax
        movl %eax, PSC_ENTRIES(%ebx)            /* gfn << 12, cur_page 0 */
        movl 12(%esi), %eax
        movl %eax, PSC_ENTRIES+4(%ebx)          /* operation, 4 KiB */
        movl $0, PSC_HEADER(%ebx)               /* cur_entry 0, end_entry 0 */
        movl $0, PSC_HEADER+4(%ebx)             /* reserved */
1:      outb %al, $PORT_PSC
        cmpl $PSC_STATUS_RETRY, PSC_STATUS(%ebx)
        je 2f
        NEXT
2:      pause
        jmp 1b

/* Page-state change of [gpa, gpa + size): batches of up to 253 entries, 2 MiB entries
 * where the address is 2 MiB aligned and a whole 2 MiB remains, else 4 KiB entries. */
op_convert:
        movl 4(%esi), %edi              /* cursor */
        movl 8(%esi), %edx
        addl %edi, %edx                 /* end */
psc_batch:
        xorl %ecx, %ecx                 /* entries in this request */
psc_fill:
        movl %edi, PSC_ENTRIES(%ebx,%ecx,8)     /* gfn << 12, cur_page 0 */
        movl 12(%esi), %eax                     /* operation */
        testl $0x1fffff, %edi
        jnz 1f
        leal 0x200000(%edi), %ebp
        cmpl %edx, %ebp
        ja 1f
        orl $PSC_SIZE_2M, %eax
        movl %ebp, %edi
        jmp 2f
1:      addl $0x1000, %edi
2:      movl %eax, PSC_ENTRIES+4(%ebx,%ecx,8)
        incl %ecx
        cmpl %edx, %edi
        jae psc_send
        cmpl $PSC_MAX_ENTRIES, %ecx
        jb psc_fill
psc_send:
        decl %ecx                       /* end_entry = index of the last entry */
        shll $16, %ecx                  /* cur_entry = 0 in the low half */
        movl %ecx, PSC_HEADER(%ebx)
        movl $0, PSC_HEADER+4(%ebx)
psc_ring:
        outb %al, $PORT_PSC
        cmpl $PSC_STATUS_RETRY, PSC_STATUS(%ebx)
        je psc_retry
        cmpl %edx, %edi                 /* ok, or invalid (the VMM counted it): go on */
        jb psc_batch
        NEXT
psc_retry:
        pause
        jmp psc_ring

/* Sampled write: the first and the last qword of every page.  The end address may wrap to
 * 0 (the top of a 2 GiB guest's shared view): the loops compare for equality. */
op_write:
        movl 4(%esi), %edi
        movl 8(%esi), %ecx
        movl 12(%esi), %eax
        addl %edi, %ecx                 /* end */
1:      movl %eax, (%edi)
        movl %eax, 4(%edi)
        movl %eax, SAMPLE_LAST(%edi)
        movl %eax, SAMPLE_LAST+4(%edi)
        addl $4096, %edi
        cmpl %ecx, %edi
        jne 1b
        NEXT

/* Sampled verify; on the first differing sample, the slow path counts the differing
 * samples from that page on and reports the first one. */
op_verify:
        movl 4(%esi), %edi
        movl 8(%esi), %ecx
        movl 12(%esi), %eax
        addl %edi, %ecx                 /* end */
1:      cmpl %eax, (%edi)
        jne verify_sampled_slow
        cmpl %eax, 4(%edi)
        jne verify_sampled_slow
        cmpl %eax, SAMPLE_LAST(%edi)
        jne verify_sampled_slow
        cmpl %eax, SAMPLE_LAST+4(%edi)
        jne verify_sampled_slow
        addl $4096, %edi
        cmpl %ecx, %edi
        jne 1b
        NEXT

verify_sampled_slow:
        xorl %edx, %edx                 /* differing samples */
1:      call verify_dword
        addl $4, %edi
        call verify_dword
        addl $SAMPLE_LAST-4, %edi
        call verify_dword
        addl $4, %edi
        call verify_dword
        addl $4, %edi                   /* next page */
        cmpl %ecx, %edi
        jne 1b
        jmp verify_end

/* compare the dword at edi with eax; count a difference in edx, record the first */
verify_dword:
        cmpl %eax, (%edi)
        je 1f
        incl %edx
        cmpl $1, %edx
        jne 1f
        movl %edi, MB_GPA(%ebx)
        movl (%edi), %ebp
        movl %ebp, MB_ACTUAL(%ebx)
1:      ret

op_write_full:
        movl 4(%esi), %edi
        movl 8(%esi), %ecx
        movl 12(%esi), %eax
        shrl $2, %ecx
        rep stosl
        NEXT

op_verify_full:
        movl 4(%esi), %edi
        movl 8(%esi), %ecx
        movl 12(%esi), %eax
        shrl $2, %ecx
        xorl %edx, %edx                 /* mismatching dwords */
verify_loop:
        jecxz verify_end
        repe scasl
        je verify_end
        incl %edx
        cmpl $1, %edx
        jne verify_loop
        leal -4(%edi), %ebp             /* first mismatch: record address and contents */
        movl %ebp, MB_GPA(%ebx)
        movl -4(%edi), %ebp
        movl %ebp, MB_ACTUAL(%ebx)
        jmp verify_loop
verify_end:
        testl %edx, %edx
        jnz verify_report
        NEXT
verify_report:
        movl %edx, MB_COUNT(%ebx)
        movl %eax, MB_PATTERN(%ebx)
        movl 8(%esi), %ecx
        movl %ecx, MB_SIZE(%ebx)
        outb %al, $PORT_VERIFY_FAIL
        NEXT

op_touch:
        movl 4(%esi), %edi
        movl 8(%esi), %ecx
        addl %edi, %ecx                 /* end */
1:      movb (%edi), %al
        addl $4096, %edi
        cmpl %ecx, %edi
        jne 1b
        NEXT

/* device work: the VMM reads the mailbox (gpa, size, pattern) on the exit */
.macro DEVICE_REQUEST port
        movl 4(%esi), %eax
        movl %eax, MB_GPA(%ebx)
        movl 8(%esi), %eax
        movl %eax, MB_SIZE(%ebx)
        movzbl 2(%esi), %eax
        movl %eax, MB_PATTERN(%ebx)
        outb %al, $\port
        NEXT
.endm

op_dma_in:
        DEVICE_REQUEST PORT_DMA_IN

op_dma_out:
        DEVICE_REQUEST PORT_DMA_OUT

/* the exit round-trip benchmark: arg OUTs to the no-op port */
op_exits:
        movl 12(%esi), %ecx
        jecxz 2f
1:      outb %al, $PORT_NOP
        decl %ecx
        jnz 1b
2:      NEXT

        .p2align 2
dispatch:                               /* indexed by the kind byte; unknown kinds end */
        .long op_end - _start + LOAD_ADDR               /* K_END */
        .long op_convert - _start + LOAD_ADDR           /* K_CONVERT */
        .long op_write - _start + LOAD_ADDR             /* K_WRITE */
        .long op_verify - _start + LOAD_ADDR            /* K_VERIFY */
        .long op_touch - _start + LOAD_ADDR             /* K_TOUCH */
        .long op_dma_in - _start + LOAD_ADDR            /* K_DMA_IN */
        .long op_dma_out - _start + LOAD_ADDR           /* K_DMA_OUT */
        .long op_exits - _start + LOAD_ADDR             /* K_EXITS */
        .long op_convert_page - _start + LOAD_ADDR      /* K_CONVERT_PAGE */
        .long op_write_full - _start + LOAD_ADDR        /* K_WRITE_FULL */
        .long op_verify_full - _start + LOAD_ADDR       /* K_VERIFY_FULL */
        .fill 256 - K_COUNT, 4, op_end - _start + LOAD_ADDR
