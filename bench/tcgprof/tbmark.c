/*
 * tbmark K: execute the marker instruction that bench/tcgprof/tbprof.c acts on, nopl 0xdeadbe0K(%rax), a no-op
 * on any x86 CPU (and so without the plugin). K: 1 start a window (zero the counts, log events), 2 dump it,
 * 3 reload the event addresses. Built static, so that it runs in the interop guest:
 *   gcc -O2 -static -o tbmark tbmark.c
 */
#include <stdio.h>

int main(int argc, char **argv)
{
    char k = argc > 1 ? argv[1][0] : 0;
    switch (k) {
    case '1': __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x01, 0xbe, 0xad, 0xde"); break;
    case '2': __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x02, 0xbe, 0xad, 0xde"); break;
    case '3': __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x03, 0xbe, 0xad, 0xde"); break;
    default: fprintf(stderr, "usage: tbmark 1|2|3\n"); return 2;
    }
    return 0;
}
