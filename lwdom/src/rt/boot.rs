//! The image's Xen ELF notes, entry point, hypercall page and boot stack.
//!
//! The PV domain builder reads the notes (`public/elfnote.h`), maps the
//! image at virtual address 0 (VIRT_BASE 0), fills the hypercall page and
//! enters `_start` with `%rsi` pointing at `start_info`.
//!
//! The page below the boot stack (`lwdom_stack_guard`) is unmapped at
//! boot ([`unmap_stack_guard`]), so that a stack overflow faults instead of
//! overwriting the bss below it.
//!
//! The assembly switches sections between `.pushsection` and
//! `.popsection`, so that module-level assembly emitted after it (the trap
//! stubs) does not land in the stack's bss section.

core::arch::global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note

    .balign 4
    .long 4, .Lgos_end - .Lgos_start, 6
    .asciz "Xen"
    .balign 4
.Lgos_start:
    .asciz "lwdom"
.Lgos_end:
    .balign 4

    .long 4, .Lver_end - .Lver_start, 5
    .asciz "Xen"
    .balign 4
.Lver_start:
    .asciz "xen-3.0"
.Lver_end:
    .balign 4

    .long 4, .Lldr_end - .Lldr_start, 8
    .asciz "Xen"
    .balign 4
.Lldr_start:
    .asciz "generic"
.Lldr_end:
    .balign 4

    .long 4, 8, 3
    .asciz "Xen"
    .balign 4
    .quad 0

    .long 4, 8, 4
    .asciz "Xen"
    .balign 4
    .quad 0

    .long 4, 8, 1
    .asciz "Xen"
    .balign 4
    .quad _start

    .long 4, 8, 2
    .asciz "Xen"
    .balign 4
    .quad lwdom_hypercall_page

    .long 4, .Lfeat_end - .Lfeat_start, 10
    .asciz "Xen"
    .balign 4
.Lfeat_start:
    .asciz "!writable_page_tables"
.Lfeat_end:
    .balign 4

    .section .text.lwdom_boot, "ax"
    .globl _start
_start:
    cld
    lea lwdom_stack_top(%rip), %rsp
    mov %rsi, %rdi
    call lwdom_rust_start
.Lhang:
    jmp .Lhang

    .section .text.lwdom_hypercall_page, "ax"
    .balign 4096
    .globl lwdom_hypercall_page
lwdom_hypercall_page:
    .fill 4096, 1, 0xcc

    .section .bss.lwdom_stack, "aw", @nobits
    .balign 4096
    .globl lwdom_stack_guard
lwdom_stack_guard:
    .skip 4096
lwdom_stack:
    .skip 262144
    .globl lwdom_stack_top
lwdom_stack_top:

    .popsection
"#,
    options(att_syntax)
);

extern "C" {
    /// The page just below the boot stack.
    static lwdom_stack_guard: u8;
}

/// Unmaps the guard page below the boot stack; returns Xen's error code on
/// failure.
pub(super) fn unmap_stack_guard() -> Result<(), isize> {
    // SAFETY: only the symbol's address is taken; the page is reserved for
    // the guard and nothing reads or writes it, so nothing relies on its
    // mapping (a zero PTE: not present).
    let rc = unsafe {
        super::hypercall::update_va_mapping(core::ptr::addr_of!(lwdom_stack_guard) as usize, 0, super::hypercall::UVMF_INVLPG)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}
