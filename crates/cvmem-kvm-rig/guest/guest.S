# cvmem-kvm guest program: a tiny interpreter of a conversion script.
#
# Runs in 64-bit mode, identity-mapped, no IDT (any exception ends the guest with a triple fault
# that the host reports): at CPL 3 with IOPL 3 where conversions go through the port transport,
# at CPL 0 where KVM delivers KVM_HC_MAP_GPA_RANGE to userspace (KVM refuses hypercalls from
# CPL 3). On entry RDI holds the script address, RSI the transport (0 port, 1 vmmcall).
# Every number (ports, opcodes, report kinds) comes from src/abi.rs through `as --defsym`.
#
# A script command is eight quadwords: op, gpa, npages, arg, expect, 0, 0, 0.
# Registers: r15 = current command, r14 = its index, r13 = the transport.
# The data value at address a for pattern p is (p == 0 ? 0 : p ^ a), as abi::pattern_value.

    .code64
    .text
    .globl _start
_start:
    mov     %rsi, %r13
    mov     %rdi, %r15
    xor     %r14d, %r14d
next:
    mov     (%r15), %rax
    cmp     $OP_END, %rax
    je      end
    cmp     $OP_MAP, %rax
    je      do_map
    cmp     $OP_FILL, %rax
    je      do_fill
    cmp     $OP_CHECK, %rax
    je      do_check
    cmp     $OP_SYNC, %rax
    je      do_sync
    cmp     $OP_ACCESS, %rax
    je      do_access
    cmp     $OP_PING, %rax
    je      do_ping
    mov     %rax, %rsi              # unknown command: report it and stop
    xor     %edx, %edx
    xor     %ecx, %ecx
    mov     %r14, %rbx
    mov     $REPORT_BAD_OP, %eax
    out     %eax, $PORT_REPORT
end:
    mov     %r14, %rbx
    xor     %eax, %eax
    out     %eax, $PORT_DONE
    jmp     end                     # the host does not resume a finished guest
advance:
    add     $COMMAND_SIZE, %r15
    inc     %r14
    jmp     next

# KVM_HC_MAP_GPA_RANGE (nr 12 in RAX, gpa, npages, attrs in RBX, RCX, RDX) by vmmcall or
# through the port transport; RAX comes back as the status.
do_map:
    mov     $12, %eax
    mov     8(%r15), %rbx
    mov     16(%r15), %rcx
    mov     24(%r15), %rdx
    test    %r13, %r13
    jnz     1f
    out     %eax, $PORT_MAP_GPA
    jmp     2f
1:  vmmcall
2:  cmp     32(%r15), %rax
    je      advance
    mov     %rax, %rsi
    mov     32(%r15), %rdx
    mov     8(%r15), %rcx
    mov     %r14, %rbx
    mov     $REPORT_STATUS, %eax
    out     %eax, $PORT_REPORT
    jmp     advance

# Fill npages at gpa with the pattern.
do_fill:
    mov     8(%r15), %rdi
    mov     16(%r15), %rcx
    mov     24(%r15), %r8
    shl     $9, %rcx
    jz      advance
1:  mov     %r8, %rax
    xor     %rdi, %rax
    test    %r8, %r8
    cmovz   %r8, %rax
    mov     %rax, (%rdi)
    add     $8, %rdi
    dec     %rcx
    jnz     1b
    jmp     advance

# Check npages at gpa against the pattern; report the first bad quadword of each page.
do_check:
    mov     8(%r15), %rdi
    mov     16(%r15), %r9
    mov     24(%r15), %r8
    test    %r9, %r9
    jz      advance
check_page:
    mov     $512, %ecx
1:  mov     %r8, %rax
    xor     %rdi, %rax
    test    %r8, %r8
    cmovz   %r8, %rax
    cmp     (%rdi), %rax
    jne     2f
    add     $8, %rdi
    dec     %ecx
    jnz     1b
    jmp     3f
2:  mov     %rax, %rdx
    mov     (%rdi), %rsi
    mov     %rdi, %rcx
    mov     %r14, %rbx
    mov     $REPORT_DATA, %eax
    out     %eax, $PORT_REPORT
    and     $~0xfff, %rdi
    add     $0x1000, %rdi
3:  dec     %r9
    jnz     check_page
    jmp     advance

# Let the host do its part of this command.
do_sync:
    mov     %r14, %rbx
    xor     %eax, %eax
    out     %eax, $PORT_SYNC
    jmp     advance

# Probe each page as a private (arg 1) or shared (arg 0) access, then touch it.
do_access:
    mov     8(%r15), %rdi
    mov     16(%r15), %r9
    mov     24(%r15), %r8
    test    %r9, %r9
    jz      advance
1:  mov     %rdi, %rbx
    mov     %r8, %rcx
    xor     %eax, %eax
    out     %eax, $PORT_FAULT
    mov     (%rdi), %rax
    add     $0x1000, %rdi
    dec     %r9
    jnz     1b
    jmp     advance

# Calibration: npages empty exits.
do_ping:
    mov     16(%r15), %r9
    test    %r9, %r9
    jz      advance
1:  xor     %eax, %eax
    out     %eax, $PORT_PING
    dec     %r9
    jnz     1b
    jmp     advance
