/*
 * A hostile guest for the robustness tests: it ignores the op ring the VMM gives it and
 * forges its own device requests, again and again, from every vCPU.  Loaded instead of the
 * player with Machine(guest_program="hostile").  Same entry state as the player (rsi = its
 * ring, rbx = its comm page).
 *
 * Round after round (ROUNDS), it
 *   1. makes [0, 256 MiB) shared with one PSC request of 128 2 MiB entries;
 *   2. asks the device to DMA_OUT, then DMA_IN, all of RAM up to 64 GiB (far past the cap
 *      on one request and past RAM), then exactly the cap (256 MiB: allowed, and it must
 *      not cost the VMM memory in proportion), then a range in no RAM at all, a range that
 *      ends before it starts, and an unaligned one (allowed: devices move bytes);
 *   3. points the mailbox at places that are no record of its ring: another vCPU's ring
 *      (one ring further), the middle of a record, the comm page, address 0.
 * Then it reports DONE.  The VMM must answer every request with a status and a counter,
 * never crash, and keep its own memory bounded.
 */
        .code64
        .text
        .globl _start

        .equ OP_SIZE, 32
        .equ K_DMA_IN, 5
        .equ K_DMA_OUT, 6
        .equ PORT_DONE, 0xe0
        .equ PORT_PSC, 0xe1
        .equ PORT_DMA_IN, 0xe2
        .equ PORT_DMA_OUT, 0xe3
        .equ MB_RECORD, 0x800
        .equ PARAM_VCPU, 0xf00
        .equ PSC_ENTRIES, 8
        .equ RING_BYTES, 65536
        .equ ROUNDS, 4
        .equ CAP, 0x10000000                    /* MAX_DMA_BYTES, 256 MiB */

/* forge a record at (%rsi): kind, pattern 0x5a, addr, end; hand it to the device on port */
.macro FORGE kind, addr, end, port
        movq $\kind | 0x5a << 16, %rax
        movq %rax, (%rsi)
        movabsq $\addr, %rax
        movq %rax, 8(%rsi)
        movabsq $\end, %rax
        movq %rax, 16(%rsi)
        movq %rsi, MB_RECORD(%rbx)
        outb %al, $\port
.endm

/* point the mailbox at rsi + offset and ring the port */
.macro POINT offset, port
        leaq \offset(%rsi), %rax
        movq %rax, MB_RECORD(%rbx)
        outb %al, $\port
.endm

_start:
        movl $ROUNDS, %r12d
round:
        /* 1. one PSC request: 128 2 MiB entries, to shared */
        xorl %ecx, %ecx
1:      movq %rcx, %rax
        shlq $21, %rax                          /* gpa = entry * 2 MiB */
        movabsq $(2 << 52) | (1 << 56), %rdx    /* shared, 2 MiB page */
        orq %rdx, %rax
        movq %rax, PSC_ENTRIES(%rbx,%rcx,8)
        incl %ecx
        cmpl $128, %ecx
        jb 1b
        movq $(127 << 16), %rax                 /* cur_entry 0, end_entry 127 */
        movq %rax, (%rbx)
        outb %al, $PORT_PSC

        /* 2. forged device requests */
        FORGE K_DMA_OUT, 0, 0x1000000000, PORT_DMA_OUT
        FORGE K_DMA_IN, 0, 0x1000000000, PORT_DMA_IN
        FORGE K_DMA_OUT, 0, CAP, PORT_DMA_OUT
        FORGE K_DMA_IN, 0, CAP, PORT_DMA_IN
        FORGE K_DMA_OUT, 0, CAP, PORT_DMA_OUT
        FORGE K_DMA_OUT, 0x7fff00000000, 0x7fff00001000, PORT_DMA_OUT
        FORGE K_DMA_IN, 0x2000, 0x1000, PORT_DMA_IN
        FORGE K_DMA_IN, 0x1001, 0x3000, PORT_DMA_IN

        /* 3. mailbox pointers that are no record of this vCPU's ring */
        POINT RING_BYTES + 4096, PORT_DMA_OUT
        POINT 16, PORT_DMA_IN
        movq %rbx, MB_RECORD(%rbx)
        outb %al, $PORT_DMA_OUT
        movq $0, MB_RECORD(%rbx)
        outb %al, $PORT_DMA_IN

        decl %r12d
        jnz round

        movl PARAM_VCPU(%rbx), %eax
        outl %eax, $PORT_DONE
        hlt

        .p2align 3
dispatch:                                       /* the loader's table: every kind ends */
        .fill 256, 8, 0
