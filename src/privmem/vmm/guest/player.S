/*
 * privmem trace player: 32-bit protected-mode guest, no paging, no firmware.
 * Assembled with `python -m privmem.vmm.guest.assemble` (GNU as --32 + objcopy -O binary);
 * position independent (only relative branches), loaded at CODE_GPA (vmm/layout.py).
 *
 * Entry state (set by the VMM through KVM_SET_REGS/KVM_SET_SREGS, flat 4 GiB segments):
 *   esi = first op (16-byte records, in the SHARED view of the reserved region)
 *   ebx = this vCPU's comm page (SHARED view): PSC request, status word, mailbox, params
 *   ebp = shared bit (guest reaches the shared view of page P at P | ebp)
 *   esp = top of this vCPU's private stack
 * Registers esi, ebx, ebp are preserved for the whole run.
 *
 * Op record: +0 u8 kind, +1 u8 flags, +2 u8 pattern, +3 u8 0, +4 u32 gpa, +8 u32 size, +12 u32 count
 */
        .code32
        .text
        .globl _start

        .equ OP_SIZE, 16
        .equ K_END, 0
        .equ K_CONVERT, 1
        .equ K_WRITE, 2
        .equ K_VERIFY, 3
        .equ K_TOUCH, 4
        .equ K_DMA_IN, 5
        .equ K_DMA_OUT, 6
        .equ K_EXITS, 7
        .equ F_PRIVATE, 1
        .equ F_SHARED_VIEW, 2

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
        .equ PSC_OP_PRIVATE, 1 << 20          /* operation, bits 52-55, as seen in the high dword */
        .equ PSC_OP_SHARED, 2 << 20
        .equ PSC_SIZE_2M, 1 << 24             /* pagesize, bit 56 */
        .equ MB_GPA, 0x800
        .equ MB_SIZE, 0x804
        .equ MB_PATTERN, 0x808
        .equ MB_ACTUAL, 0x80c
        .equ MB_COUNT, 0x810
        .equ PARAM_VCPU, 0xf04

_start:
        cld
next_op:
        movzbl (%esi), %eax
        cmpl $K_WRITE, %eax
        je op_write
        cmpl $K_VERIFY, %eax
        je op_verify
        cmpl $K_CONVERT, %eax
        je op_convert
        cmpl $K_TOUCH, %eax
        je op_touch
        cmpl $K_DMA_IN, %eax
        je op_dma_in
        cmpl $K_DMA_OUT, %eax
        je op_dma_out
        cmpl $K_EXITS, %eax
        je op_exits
op_end:                                 /* K_END and anything unknown */
        movl PARAM_VCPU(%ebx), %eax
        outl %eax, $PORT_DONE
        hlt
        jmp op_end

op_done:
        addl $OP_SIZE, %esi
        jmp next_op

/* edi = gpa of the op, through the view its flags select */
view_addr:
        movl 4(%esi), %edi
        testb $F_SHARED_VIEW, 1(%esi)
        jz 1f
        orl %ebp, %edi
1:      ret

/* eax = pattern byte replicated 4 times */
pattern32:
        movzbl 2(%esi), %eax
        imull $0x01010101, %eax, %eax
        ret

op_write:
        call view_addr
        call pattern32
        movl 8(%esi), %ecx
        shrl $2, %ecx
        rep stosl
        jmp op_done

op_verify:
        call view_addr
        call pattern32
        movl 8(%esi), %ecx
        shrl $2, %ecx
        xorl %edx, %edx                 /* mismatching dwords */
verify_loop:
        jecxz verify_end
        repe scasl
        jne verify_mismatch
        jmp verify_end
verify_mismatch:
        incl %edx
        cmpl $1, %edx
        jne verify_loop
        pushl %ecx                      /* first mismatch: record address and contents */
        leal -4(%edi), %ecx
        movl %ecx, MB_GPA(%ebx)
        movl -4(%edi), %ecx
        movl %ecx, MB_ACTUAL(%ebx)
        popl %ecx
        jmp verify_loop
verify_end:
        testl %edx, %edx
        jz op_done
        movl %edx, MB_COUNT(%ebx)
        movl %eax, MB_PATTERN(%ebx)
        movl 8(%esi), %ecx
        movl %ecx, MB_SIZE(%ebx)
        movl PARAM_VCPU(%ebx), %eax
        outl %eax, $PORT_VERIFY_FAIL
        jmp op_done

op_touch:
        call view_addr
        movl 8(%esi), %ecx
        shrl $12, %ecx
        testl %ecx, %ecx
        jz op_done
1:      movb (%edi), %al
        addl $4096, %edi
        decl %ecx
        jnz 1b
        jmp op_done

fill_mailbox:
        movl 4(%esi), %eax
        movl %eax, MB_GPA(%ebx)
        movl 8(%esi), %eax
        movl %eax, MB_SIZE(%ebx)
        movzbl 2(%esi), %eax
        movl %eax, MB_PATTERN(%ebx)
        movl PARAM_VCPU(%ebx), %eax
        ret

op_dma_in:
        call fill_mailbox
        outl %eax, $PORT_DMA_IN
        jmp op_done

op_dma_out:
        call fill_mailbox
        outl %eax, $PORT_DMA_OUT
        jmp op_done

op_exits:
        movl 12(%esi), %ecx
        testl %ecx, %ecx
        jz op_done
1:      outb %al, $PORT_NOP
        decl %ecx
        jnz 1b
        jmp op_done

/* Page-state change of [gpa, gpa + size): batches of up to 253 entries, 2 MiB entries
 * where the address is 2 MiB aligned and a whole 2 MiB remains, else 4 KiB entries. */
op_convert:
        movl 4(%esi), %edi              /* cursor */
        movl 8(%esi), %edx
        addl %edi, %edx                 /* end */
psc_batch:
        cmpl %edx, %edi
        jae op_done
        xorl %ecx, %ecx                 /* entries in this request */
psc_fill:
        cmpl %edx, %edi
        jae psc_send
        cmpl $PSC_MAX_ENTRIES, %ecx
        jae psc_send
        movl %edi, PSC_ENTRIES(%ebx,%ecx,8)     /* gfn << 12, cur_page 0 */
        movl $PSC_OP_SHARED, %eax
        testb $F_PRIVATE, 1(%esi)
        jz 1f
        movl $PSC_OP_PRIVATE, %eax
1:      pushl %edx
        subl %edi, %edx                 /* bytes remaining */
        cmpl $0x200000, %edx
        jb 2f
        testl $0x1fffff, %edi
        jnz 2f
        orl $PSC_SIZE_2M, %eax
        addl $0x200000, %edi
        jmp 3f
2:      addl $0x1000, %edi
3:      popl %edx
        movl %eax, PSC_ENTRIES+4(%ebx,%ecx,8)
        incl %ecx
        jmp psc_fill
psc_send:
        decl %ecx                       /* end_entry = index of the last entry */
        shll $16, %ecx                  /* cur_entry = 0 in the low half */
        movl %ecx, PSC_HEADER(%ebx)
        movl $0, PSC_HEADER+4(%ebx)
psc_ring:
        movl $0xffffffff, PSC_STATUS(%ebx)
        movl PARAM_VCPU(%ebx), %eax
        outl %eax, $PORT_PSC
        movl PSC_STATUS(%ebx), %eax
        cmpl $PSC_STATUS_RETRY, %eax
        jne psc_batch                   /* ok, or invalid (the VMM counted it): go on */
        pause
        jmp psc_ring
