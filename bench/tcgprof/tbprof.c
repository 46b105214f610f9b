/*
 * tbprof: a QEMU TCG plugin that profiles the guest of the interop VM, for bench/tcg-profile.sh.
 *
 * The kernel-host side-by-side runs (bench/side-by-side.sh) happen inside a TCG guest with no profiler of its
 * own. QEMU runs every guest instruction itself, so a plugin sees all of them, kernel and user, on both vCPUs:
 *
 *   - instructions: every translation block (TB) counts its executions per vCPU; a block's instructions times
 *     its executions, summed by symbol, is where the instructions go;
 *   - time: a host thread wakes every TBPROF_SAMPLE_US (500) and charges one sample to the block each vCPU
 *     last entered (a halted vCPU stays charged to the block that halted it: the idle loop);
 *   - events: the entry of each address listed in the file TBPROF_EVENTS ("hexaddr name" lines, kernel
 *     functions resolved by the driver once the guest printed its kallsyms) is logged with the host's
 *     CLOCK_MONOTONIC and the vCPU, for counts per I/O and QD1 timelines.
 *
 * The guest steers it with one instruction that is a no-op on any x86 CPU, nopl 0xdeadbe0K(%rax) (bytes
 * 0f 1f 80 0K be ad de, bench/tcgprof/tbmark.c): K=1 zeroes the counts and starts the event log, K=2 writes
 * TBPROF_OUT.N (counts: "vaddr insns execs0 execs1 samples0 samples1") and TBPROF_OUT.ev.N (events:
 * "ns vcpu index"), N counting the dumps from 0; K=3 reloads TBPROF_EVENTS and flushes the translated code
 * so that the new addresses are instrumented. TBPROF_COUNT=0 leaves the per-block counting out (events only:
 * the counting callback on every block slows the guest by about a fifth and shifts its timing).
 *
 * Written against the plugin API of QEMU 7.2 (Debian 12's qemu-system-x86), API version 1; the few
 * declarations it needs are below, so that no QEMU headers are needed to build it:
 *   gcc -O2 -shared -fPIC -pthread -o tbprof.so tbprof.c
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* QEMU plugin API, version 1 (include/qemu/qemu-plugin.h of QEMU 7.2): only what is used here. */
typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min, cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus, max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_simple_cb_t)(qemu_plugin_id_t);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qemu_plugin_vcpu_tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, qemu_plugin_vcpu_udata_cb_t,
                                          enum qemu_plugin_cb_flags, void *);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, qemu_plugin_vcpu_udata_cb_t,
                                            enum qemu_plugin_cb_flags, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
void qemu_plugin_reset(qemu_plugin_id_t, qemu_plugin_simple_cb_t);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define VCPUS 2            /* the side-by-side VM's; blocks run by others are counted nowhere */
#define MAX_EVENTS 256     /* addresses in TBPROF_EVENTS */
#define EVENT_CAP (8u << 20) /* event records per dump (16 bytes each) */

/* One translated block: its first guest address and length, and what the current dump window saw of it. */
struct block {
    uint64_t vaddr, insns;
    uint64_t execs[VCPUS], samples[VCPUS];
    struct block *next;
};

struct event { uint64_t ns; uint32_t vcpu, index; };

static qemu_plugin_id_t plugin_id;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* the block list, the event addresses, dumping */
static struct block *blocks;
static struct block *current[VCPUS]; /* the block each vCPU entered last, for the sampler */
static uint64_t event_addr[MAX_EVENTS];
static int n_events;
static struct event *event_log;
static uint32_t event_len;
static int logging;
static int dumps;
static int counting = 1;
static const char *out_prefix = "/tmp/tbprof";
static long sample_us = 500;

static void block_exec(unsigned int vcpu, void *data)
{
    struct block *b = data;
    if (vcpu < VCPUS) {
        b->execs[vcpu]++;
        __atomic_store_n(&current[vcpu], b, __ATOMIC_RELAXED);
    }
}

static void event_exec(unsigned int vcpu, void *data)
{
    if (!__atomic_load_n(&logging, __ATOMIC_RELAXED))
        return;
    uint32_t i = __atomic_fetch_add(&event_len, 1, __ATOMIC_RELAXED);
    if (i >= EVENT_CAP)
        return;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    event_log[i] = (struct event){ (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec, vcpu,
                                   (uint32_t)(uintptr_t)data };
}

static void *sampler(void *unused)
{
    (void)unused;
    struct timespec period = { sample_us / 1000000, (sample_us % 1000000) * 1000 };
    for (;;) {
        nanosleep(&period, NULL);
        for (int v = 0; v < VCPUS; v++) {
            struct block *b = __atomic_load_n(&current[v], __ATOMIC_RELAXED);
            if (b)
                __atomic_fetch_add(&b->samples[v], 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void load_events(void)
{
    const char *path = getenv("TBPROF_EVENTS");
    FILE *f = path ? fopen(path, "r") : NULL;
    int n = 0;
    unsigned long long a;
    if (f) {
        while (n < MAX_EVENTS && fscanf(f, "%llx %*s", &a) == 1)
            event_addr[n++] = a;
        fclose(f);
    }
    n_events = n;
}

static int event_index(uint64_t vaddr)
{
    for (int i = 0; i < n_events; i++)
        if (event_addr[i] == vaddr)
            return i;
    return -1;
}

static void dump(void)
{
    char path[4096];
    uint32_t n = event_len < EVENT_CAP ? event_len : EVENT_CAP;
    logging = 0;
    snprintf(path, sizeof path, "%s.%d", out_prefix, dumps);
    FILE *f = fopen(path, "w");
    if (f) {
        for (struct block *b = blocks; b; b = b->next)
            if (b->execs[0] | b->execs[1] | b->samples[0] | b->samples[1])
                fprintf(f, "%llx %llu %llu %llu %llu %llu\n", (unsigned long long)b->vaddr,
                        (unsigned long long)b->insns, (unsigned long long)b->execs[0],
                        (unsigned long long)b->execs[1], (unsigned long long)b->samples[0],
                        (unsigned long long)b->samples[1]);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s.ev.%d", out_prefix, dumps);
    f = fopen(path, "w");
    if (f) {
        for (uint32_t i = 0; i < n; i++)
            fprintf(f, "%llu %u %u\n", (unsigned long long)event_log[i].ns, event_log[i].vcpu, event_log[i].index);
        fclose(f);
    }
    dumps++;
}

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

static void after_reset(qemu_plugin_id_t id)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
}

static void marker(unsigned int vcpu, void *data)
{
    (void)vcpu;
    long k = (long)(uintptr_t)data;
    pthread_mutex_lock(&lock);
    if (k == 1) {
        for (struct block *b = blocks; b; b = b->next)
            memset(b->execs, 0, sizeof b->execs), memset(b->samples, 0, sizeof b->samples);
        event_len = 0;
        logging = 1;
    } else if (k == 2) {
        dump();
    } else if (k == 3) {
        load_events();
        pthread_mutex_unlock(&lock);
        /* Flushes all translations; new ones are instrumented for the events just loaded. */
        qemu_plugin_reset(plugin_id, after_reset);
        return;
    }
    pthread_mutex_unlock(&lock);
}

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    struct block *b = calloc(1, sizeof *b);
    if (!b)
        return;
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = qemu_plugin_tb_n_insns(tb);
    pthread_mutex_lock(&lock);
    b->next = blocks;
    blocks = b;
    for (size_t i = 0; i < b->insns; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const unsigned char *d = qemu_plugin_insn_data(insn);
        int e = n_events ? event_index(qemu_plugin_insn_vaddr(insn)) : -1;
        if (e >= 0)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, event_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)e);
        if (qemu_plugin_insn_size(insn) == 7 && d[0] == 0x0f && d[1] == 0x1f && d[2] == 0x80 && d[4] == 0xbe &&
            d[5] == 0xad && d[6] == 0xde)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, marker, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)d[3]);
    }
    pthread_mutex_unlock(&lock);
    if (counting)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, block_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info, (void)argc, (void)argv;
    const char *v;
    plugin_id = id;
    if ((v = getenv("TBPROF_OUT")))
        out_prefix = v;
    if ((v = getenv("TBPROF_COUNT")) && v[0] == '0')
        counting = 0;
    if ((v = getenv("TBPROF_SAMPLE_US")) && atol(v) > 0)
        sample_us = atol(v);
    event_log = calloc(EVENT_CAP, sizeof *event_log);
    if (!event_log)
        return -1;
    load_events();
    pthread_t t;
    if (counting && pthread_create(&t, NULL, sampler, NULL) != 0)
        return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
    return 0;
}
