@ Hand-written ARM functions without an mcount call: scan must say
@ "no mcount site" for each.
    .syntax unified
    .arm
    .text

    .global asm_add
    .type asm_add, %function
    .p2align 2
asm_add:
    add r0, r0, r1
    bx lr
    .size asm_add, . - asm_add

    .global asm_frame
    .type asm_frame, %function
    .p2align 2
asm_frame:
    push {r4, lr}
    mov r4, r0
    bl asm_add
    add r0, r0, r4
    pop {r4, pc}
    .size asm_frame, . - asm_frame

    .section .note.GNU-stack, "", %progbits
