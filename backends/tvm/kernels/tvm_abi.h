/* What sliver's C kernels (lowbit.c, wq_gemv.c) share: the parts of the TVM-FFI C ABI
 * they use to be called as packed functions, raising errors, and running a call's
 * slices on TVM's thread pool.  Functions are static inline: each kernel file is its own
 * translation unit and uses only some of them. */
#ifndef SLIVER_TVM_ABI_H
#define SLIVER_TVM_ABI_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define SLIVER_EXTERN extern "C"
#else
#define SLIVER_EXTERN
#endif

/* ---- the TVM-FFI C ABI (tvm_ffi 0.1, include/tvm/ffi/c_api.h), the parts we use ---- */
typedef struct {
  void* data;
  struct { int32_t device_type; int32_t device_id; } device;
  int32_t ndim;
  struct { uint8_t code; uint8_t bits; uint16_t lanes; } dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} sliver_DLTensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } u;
} sliver_Any;
typedef struct { uint64_t ref; int32_t type_index; uint32_t pad; void* deleter; } sliver_Object;
enum { kAnyNone = 0, kAnyDLTensorPtr = 7 };
/* Raise an error the caller sees as a Python exception (libtvm_ffi, already loaded in
 * the process; weak, so the library still loads if it is not). */
SLIVER_EXTERN void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) __attribute__((weak));
static inline int fail(const char* message) {
  if (TVMFFIErrorSetRaisedFromCStr) TVMFFIErrorSetRaisedFromCStr("RuntimeError", message);
  return -1;
}
/* a packed function's argument as a tensor (a DLTensor* or an ffi::Tensor object), its data */
static inline sliver_DLTensor* as_tensor(const sliver_Any* a) {
  if (a->type_index == kAnyDLTensorPtr) return (sliver_DLTensor*)a->u.v_ptr;
  return (sliver_DLTensor*)((char*)a->u.v_ptr + sizeof(sliver_Object)); /* ffi::Tensor object */
}
static inline void* data_of(const sliver_Any* a) {
  sliver_DLTensor* t = as_tensor(a);
  return (char*)t->data + t->byte_offset;
}
/* a packed function's successful end: result None, return code 0 */
static inline int return_none(sliver_Any* result) {
  result->type_index = kAnyNone;
  result->u.v_int64 = 0;
  return 0;
}

/* ---- TVM's thread pool (tvm/runtime/c_backend_api.h), the pool TVM-generated parallel
 * loops of the same library run on (TVM_NUM_THREADS threads).  Weak like the above: a
 * library loaded without libtvm_runtime runs the kernels serially. ---- */
typedef struct { void* sync_handle; int32_t num_task; } sliver_ParallelGroupEnv;
typedef int (*sliver_ParallelLambda)(int task_id, sliver_ParallelGroupEnv* penv, void* cdata);
SLIVER_EXTERN int TVMBackendParallelLaunch(sliver_ParallelLambda flambda, void* cdata, int num_task)
    __attribute__((weak));
/* every task of a launch waits here until all have arrived */
SLIVER_EXTERN int TVMBackendParallelBarrier(int task_id, sliver_ParallelGroupEnv* penv) __attribute__((weak));

/* A kernel call's work cut into `nslice` slices, each with its own scratch: run(job, s, nslice)
 * computes slice s.  Slices never share what they write, so results do not depend on how
 * many there are or which thread runs which. */
typedef struct {
  void (*run)(void* job, int slice, int nslice);
  void* job;
  int nslice;
} pool_job;
static inline int pool_task(int task_id, sliver_ParallelGroupEnv* penv, void* cdata) {
  const pool_job* p = (const pool_job*)cdata;
  const int step = penv->num_task > 0 ? penv->num_task : 1; /* fewer tasks than slices: each takes several */
  for (int s = task_id; s < p->nslice; s += step) p->run(p->job, s, p->nslice);
  return 0;
}
static inline int pool_probe(int task_id, sliver_ParallelGroupEnv* penv, void* cdata) {
  if (task_id == 0) *(int*)cdata = penv->num_task;
  return 0;
}
/* How many slices to cut `items` independent pieces of work (output rows) into: the
 * pool's thread count, at most `items`, and 1 (serial) without a pool or when the work is
 * too small to pay for waking it (`work` below `min_work`).  The thread count is asked
 * with an empty launch (before any output is written, so the scratch of every slice can
 * be allocated first), on every call: remembering it would keep a call serial after the
 * pool was resized up (runtime.config_threadpool), and the launch costs microseconds on
 * calls of tens of microseconds and more. */
static inline int pool_slices(long items, double work, double min_work) {
  if (!TVMBackendParallelLaunch || items < 2 || work < min_work) return 1;
  int n = 1;
  if (TVMBackendParallelLaunch(pool_probe, &n, 0) != 0 || n < 1) return 1;
  return n < items ? n : (int)items;
}
static inline void pool_run(pool_job* p) {
  if (p->nslice > 1 && TVMBackendParallelLaunch(pool_task, p, 0) == 0) return; /* tasks never fail */
  for (int s = 0; s < p->nslice; s++) p->run(p->job, s, p->nslice);
}
/* slice s of nslice of [0, items): [*lo, *hi) */
static inline void slice_range(long items, int s, int nslice, long* lo, long* hi) {
  *lo = items * s / nslice;
  *hi = items * (s + 1) / nslice;
}
#endif
