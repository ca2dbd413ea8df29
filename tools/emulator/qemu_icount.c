/* A QEMU TCG plugin that counts executed guest instructions, in total and per
 * translation block, between markers the guest program sets.
 *
 * Built by sliver.tools.emulator.icount with the host C compiler and loaded with
 *     qemu-aarch64 -plugin ./qemu_icount.so,out=FILE PROG
 * (the dynamically linked qemu-aarch64 from Debian's qemu-user; the static build
 * cannot load plugins).  Counting is inline (one add per executed block), so it runs
 * at nearly the speed of plain emulation, and it is exact: a block adds its
 * instruction count each time it runs, which equals
 * `qemu-aarch64-static -singlestep -d exec PROG 2>&1 | grep -c Trace`.
 *
 * Markers: the guest calls close(fd) with fd = -(MARK_BASE + 2*k + dump).  The
 * call fails with EBADF and has no other effect; the plugin writes
 *     mark K TOTAL
 * and, when dump is 1, one line per block executed since the previous marker
 *     tb VADDR N_INSNS TIMES
 * At exit it writes "exit TOTAL".  Count with one guest thread: the inline adds
 * are not atomic.
 *
 * The declarations below are the subset of QEMU's qemu-plugin.h (API version 1,
 * QEMU 7.2, Debian bookworm) this plugin uses; Debian ships no header for it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(
    qemu_plugin_id_t id,
    void (*cb)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t, uint64_t,
               uint64_t, uint64_t, uint64_t, uint64_t));
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *),
                                    void *userdata);

EXPORT int qemu_plugin_version = 1;

#define MARK_BASE 0x51100000LL /* keep in sync with icount.MARK_BASE */
#define MAX_MARKS 0x100000LL
#define SYS_CLOSE_AARCH64 57
#define CHUNK 65536

struct block { uint64_t vaddr, n, times, seen; };

static struct block **chunks;   /* fixed-size chunks: block addresses never move */
static size_t n_blocks, n_chunks;
static uint64_t total;
static FILE *out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct block *new_block(void)
{
    pthread_mutex_lock(&lock);
    if (n_blocks == n_chunks * CHUNK) {
        chunks = realloc(chunks, (n_chunks + 1) * sizeof *chunks);
        chunks[n_chunks] = calloc(CHUNK, sizeof(struct block));
        if (!chunks || !chunks[n_chunks]) {
            fprintf(stderr, "qemu_icount: out of memory\n");
            abort();
        }
        n_chunks++;
    }
    struct block *b = &chunks[n_blocks / CHUNK][n_blocks % CHUNK];
    n_blocks++;
    pthread_mutex_unlock(&lock);
    return b;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    struct block *b = new_block();
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->times, 1);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total, b->n);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    int64_t code = -(int64_t)(int32_t)a1 - MARK_BASE; /* close() takes an int */
    if (num != SYS_CLOSE_AARCH64 || code < 0 || code >= MAX_MARKS)
        return;
    bool dump = code & 1;
    pthread_mutex_lock(&lock);
    fprintf(out, "mark %" PRId64 " %" PRIu64 "\n", code >> 1, total);
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = &chunks[i / CHUNK][i % CHUNK];
        if (b->times != b->seen) {
            if (dump)
                fprintf(out, "tb %" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr, b->n,
                        b->times - b->seen);
            b->seen = b->times;
        }
    }
    fflush(out);
    pthread_mutex_unlock(&lock);
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    fprintf(out, "exit %" PRIu64 "\n", total);
    fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            path = argv[i] + 4;
    out = path ? fopen(path, "w") : stderr;
    if (!out) {
        fprintf(stderr, "qemu_icount: cannot open %s\n", path);
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
