/*
 * privmem trace player: 64-bit long-mode guest, identity-paged, no firmware.
 * Assembled with `python -m privmem.vmm.guest.assemble` (GNU as --64 + objcopy -O binary).
 *
 * The player lives in the firmware region (vmm/firmware.py), a memslot of its own outside
 * guest RAM, with its page tables, a stack, a comm page and an op ring per vCPU; so a trace
 * owns every page of RAM, page 0 included.  The code is position independent: the VMM
 * relocates the dispatch table (offsets from _start, below) to absolute addresses when it
 * loads the player, and points the table's data-check kinds at the routines the machine's
 * data_check asks for, so records do not depend on the machine they run on.
 *
 * Virtual addresses (set up by the VMM's page tables, vmm/paging.py):
 *   private view of RAM page P:  P                      (identity)
 *   shared view of RAM page P:   0xffff800000000000 + P  -> GPA P | shared bit
 *   firmware region:             just below 1 << 47     -> just below the shared bit
 *
 * Every guest instruction counts: on the project's host (nested kvm_pvm) the guest is
 * emulated at ~1 us per instruction, and guest work drowns the costs the machine measures
 * (conversions, discards, re-faults).  So the VMM does what it can when it encodes the ops
 * (vmm/program.py): the address through the op's view, the end address, the pattern
 * replicated into a qword, the whole PSC entry of a one-page conversion; the player only
 * moves them.  Device ops hand the VMM the record itself (its address in the mailbox).
 *
 * WRITE and VERIFY are SAMPLED: per 4 KiB page, the qword at offset 0 and the qword at
 * offset 4088.  That tells a page holding the pattern from a page that was discarded (reads
 * zero) or holds another pattern.  The _FULL routines (data_check "full") touch every byte.
 * TOUCH reads one byte per page.
 *
 * Entry state (KVM_SET_REGS / KVM_SET_SREGS: long mode, paging on):
 *   rsi = first record of this vCPU's op ring       rbx = this vCPU's comm page
 *   rsp = top of this vCPU's stack
 * rsi, rbx and r15 (the dispatch table) are kept for the whole run.
 *
 * Record (32 bytes): +0 u8 kind, +1 u8 flags, +2 u8 pattern, +3 u8 0, +4 u32 count (exits),
 *   +8 u64 addr (through the op's view; the gpa for convert and device ops; refill: the next
 *   record), +16 u64 end (addr + size), +24 u64 arg (write/verify: the pattern qword;
 *   convert: the PSC operation bits; one-page convert: the whole PSC entry).
 */
        .code64
        .text
        .globl _start

        .equ OP_SIZE, 32
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
        .equ K_REFILL, 11
        .equ K_DELAY, 12
        .equ K_COUNT, 13

        .equ PORT_DONE, 0xe0
        .equ PORT_PSC, 0xe1
        .equ PORT_DMA_IN, 0xe2
        .equ PORT_DMA_OUT, 0xe3
        .equ PORT_VERIFY_FAIL, 0xe4
        .equ PORT_NOP, 0xe5
        .equ PORT_REFILL, 0xe6
        .equ PORT_DELAY, 0xe7

        .equ PSC_HEADER, 0
        .equ PSC_ENTRIES, 8
        .equ PSC_MAX_ENTRIES, 253
        .equ PSC_STATUS, 2032
        .equ PSC_STATUS_RETRY, 2
        .equ PSC_SIZE_2M_BIT, 56
        .equ MB_RECORD, 0x800
        .equ MB_ADDRESS, 0x808
        .equ MB_ACTUAL, 0x810
        .equ MB_COUNT, 0x818
        .equ PARAM_VCPU, 0xf00

        .equ SAMPLE_LAST, 4088                /* the second sampled qword of a page */

/* next record, dispatched through the table: 3 instructions between ops */
        .macro NEXT
        addq $OP_SIZE, %rsi
        movzbl (%rsi), %eax
        jmp *(%r15,%rax,8)
        .endm

_start:
        cld
        leaq dispatch(%rip), %r15
        movzbl (%rsi), %eax
        jmp *(%r15,%rax,8)

op_end:                                 /* K_END and anything unknown */
        movl PARAM_VCPU(%rbx), %eax
        outl %eax, $PORT_DONE
        hlt
        jmp op_end

/* The ring's segment is used up: the VMM refills it while the guest moves to the next one,
 * whose address the record holds (read before the exit, which rewrites this segment). */
op_refill:
        movq 8(%rsi), %rdi
        outb %al, $PORT_REFILL
        movq %rdi, %rsi
        movzbl (%rsi), %eax
        jmp *(%r15,%rax,8)

/* One 4 KiB page: a one-entry PSC request.  The VMM writes the status word on every PSC
 * exit (0 ok, 1 invalid: counted by the VMM, go on; 2 retry: ring again). */
op_convert_page:
        movq 24(%rsi), %rax
        movq %rax, PSC_ENTRIES(%rbx)            /* gfn << 12 | operation << 52, cur_page 0 */
        movq $0, PSC_HEADER(%rbx)               /* cur_entry 0, end_entry 0, reserved 0 */
1:      outb %al, $PORT_PSC
        cmpl $PSC_STATUS_RETRY, PSC_STATUS(%rbx)
        je 2f
        NEXT
2:      pause
        jmp 1b

/* Page-state change of [addr, end): batches of up to 253 entries, 2 MiB entries where the
 * address is 2 MiB aligned and a whole 2 MiB remains, else 4 KiB entries. */
op_convert:
        movq 8(%rsi), %rdi              /* cursor */
        movq 16(%rsi), %rdx             /* end */
        movq 24(%rsi), %r8              /* operation << 52 */
psc_batch:
        xorl %ecx, %ecx                 /* entries in this request */
psc_fill:
        movq %rdi, %rax
        orq %r8, %rax
        testl $0x1fffff, %edi
        jnz 1f
        leaq 0x200000(%rdi), %rbp
        cmpq %rdx, %rbp
        ja 1f
        btsq $PSC_SIZE_2M_BIT, %rax
        movq %rbp, %rdi
        jmp 2f
1:      addq $0x1000, %rdi
2:      movq %rax, PSC_ENTRIES(%rbx,%rcx,8)
        incl %ecx
        cmpq %rdx, %rdi
        jae psc_send
        cmpl $PSC_MAX_ENTRIES, %ecx
        jb psc_fill
psc_send:
        decl %ecx                       /* end_entry = index of the last entry */
        shll $16, %ecx                  /* cur_entry 0 below it, reserved 0 above */
        movq %rcx, PSC_HEADER(%rbx)
psc_ring:
        outb %al, $PORT_PSC
        cmpl $PSC_STATUS_RETRY, PSC_STATUS(%rbx)
        je psc_retry
        cmpq %rdx, %rdi                 /* ok, or invalid (the VMM counted it): go on */
        jb psc_batch
        NEXT
psc_retry:
        pause
        jmp psc_ring

/* Sampled write: the first and the last qword of every page. */
op_write:
        movq 8(%rsi), %rdi
        movq 16(%rsi), %rcx
        movq 24(%rsi), %rax
1:      movq %rax, (%rdi)
        movq %rax, SAMPLE_LAST(%rdi)
        addq $4096, %rdi
        cmpq %rcx, %rdi
        jne 1b
        NEXT

/* Sampled verify; on the first differing sample, the slow path counts the differing
 * samples from that page on and reports the first one. */
op_verify:
        movq 8(%rsi), %rdi
        movq 16(%rsi), %rcx
        movq 24(%rsi), %rax
1:      cmpq %rax, (%rdi)
        jne verify_sampled_slow
        cmpq %rax, SAMPLE_LAST(%rdi)
        jne verify_sampled_slow
        addq $4096, %rdi
        cmpq %rcx, %rdi
        jne 1b
        NEXT

verify_sampled_slow:
        xorl %edx, %edx                 /* differing samples */
1:      call verify_qword
        addq $SAMPLE_LAST, %rdi
        call verify_qword
        addq $4096 - SAMPLE_LAST, %rdi  /* next page */
        cmpq %rcx, %rdi
        jne 1b
        jmp verify_end

/* compare the qword at rdi with rax; count a difference in rdx, record the first */
verify_qword:
        cmpq %rax, (%rdi)
        je 1f
        incq %rdx
        cmpq $1, %rdx
        jne 1f
        movq %rdi, MB_ADDRESS(%rbx)
        movq (%rdi), %rbp
        movq %rbp, MB_ACTUAL(%rbx)
1:      ret

op_write_full:
        movq 8(%rsi), %rdi
        movq 16(%rsi), %rcx
        movq 24(%rsi), %rax
        subq %rdi, %rcx
        shrq $3, %rcx
        rep stosq
        NEXT

op_verify_full:
        movq 8(%rsi), %rdi
        movq 16(%rsi), %rcx
        movq 24(%rsi), %rax
        subq %rdi, %rcx
        shrq $3, %rcx
        xorl %edx, %edx                 /* differing qwords */
verify_loop:
        jrcxz verify_end
        repe scasq
        je verify_end
        incq %rdx
        cmpq $1, %rdx
        jne verify_loop
        leaq -8(%rdi), %rbp             /* first difference: record address and contents */
        movq %rbp, MB_ADDRESS(%rbx)
        movq -8(%rdi), %rbp
        movq %rbp, MB_ACTUAL(%rbx)
        jmp verify_loop
verify_end:
        testq %rdx, %rdx
        jnz verify_report
        NEXT
verify_report:
        movq %rdx, MB_COUNT(%rbx)
        movq %rsi, MB_RECORD(%rbx)
        outb %al, $PORT_VERIFY_FAIL
        NEXT

op_touch:
        movq 8(%rsi), %rdi
        movq 16(%rsi), %rcx
1:      movb (%rdi), %al
        addq $4096, %rdi
        cmpq %rcx, %rdi
        jne 1b
        NEXT

/* device work and delays: the VMM reads the record whose address is in the mailbox */
.macro DEVICE_REQUEST port
        movq %rsi, MB_RECORD(%rbx)
        outb %al, $\port
        NEXT
.endm

op_dma_in:
        DEVICE_REQUEST PORT_DMA_IN

op_dma_out:
        DEVICE_REQUEST PORT_DMA_OUT

op_delay:
        DEVICE_REQUEST PORT_DELAY

/* the exit round-trip benchmark: count OUTs to the no-op port */
op_exits:
        movl 4(%rsi), %ecx
        jecxz 2f
1:      outb %al, $PORT_NOP
        decl %ecx
        jnz 1b
2:      NEXT

        .p2align 3
dispatch:                               /* offsets from _start, relocated by the VMM */
        .quad op_end - _start                   /* K_END */
        .quad op_convert - _start               /* K_CONVERT */
        .quad op_write - _start                 /* K_WRITE (K_WRITE_FULL under data_check "full") */
        .quad op_verify - _start                /* K_VERIFY (K_VERIFY_FULL under "full") */
        .quad op_touch - _start                 /* K_TOUCH */
        .quad op_dma_in - _start                /* K_DMA_IN */
        .quad op_dma_out - _start               /* K_DMA_OUT */
        .quad op_exits - _start                 /* K_EXITS */
        .quad op_convert_page - _start          /* K_CONVERT_PAGE */
        .quad op_write_full - _start            /* K_WRITE_FULL */
        .quad op_verify_full - _start           /* K_VERIFY_FULL */
        .quad op_refill - _start                /* K_REFILL */
        .quad op_delay - _start                 /* K_DELAY */
        .fill 256 - K_COUNT, 8, op_end - _start /* unknown kinds end */
dispatch_end:
