/*
 * sliver.h: the C ABI of sliver's native runtime (libsliver, native/sliver.cc).
 *
 * Opens a .sliver artifact, checks it as the Python runtime does (the archive's
 * entries, the manifest, the library's sha256 and CPU architecture), loads its
 * library with the TVM C++ runtime (libtvm_runtime.so + libtvm_ffi.so) and runs it on
 * caller-owned buffers.  No Python, no numpy.
 *
 *     SliverModel* m;
 *     if (sliver_model_open("model.sliver", &m) != 0) { puts(sliver_last_error()); return 1; }
 *     SliverTensorInfo in, out;
 *     sliver_model_input(m, 0, &in);           // name, dtype, shape, bytes
 *     sliver_model_output(m, 0, &out);
 *     float x[...], y[...];                     // in.bytes and out.bytes
 *     const void* inputs[] = {x};
 *     void* outputs[] = {y};
 *     if (sliver_model_run(m, inputs, outputs) != 0) puts(sliver_last_error());
 *     sliver_model_close(m);
 *
 * Every function returning int returns 0 on success and -1 on failure; then
 * sliver_last_error() (per thread) says what went wrong.  Buffers are dense,
 * C-ordered arrays of the dtype and shape the info gives.  A model may be run from
 * one thread at a time (open one model per thread to run in parallel).
 */
#ifndef SLIVER_H_
#define SLIVER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLIVER_ABI_VERSION 1

typedef struct SliverModel SliverModel;

/* One input or output of a model.  The strings and the shape belong to the model. */
typedef struct {
  const char* name;     /* the model's name for it */
  const char* dtype;    /* numpy's name: "float32", "int64", "uint8", "bool", ... */
  int32_t ndim;
  const int64_t* shape; /* ndim entries */
  size_t itemsize;      /* bytes per element */
  size_t bytes;         /* bytes of the whole dense array */
} SliverTensorInfo;

/* The ABI version this library implements (SLIVER_ABI_VERSION). */
int sliver_abi_version(void);

/* The last error of the calling thread ("" if none). */
const char* sliver_last_error(void);

/* Open and check a .sliver artifact and load its library; *out is NULL on failure. */
int sliver_model_open(const char* path, SliverModel** out);

/* Unload the model (NULL is ignored). */
void sliver_model_close(SliverModel* model);

int sliver_model_num_inputs(const SliverModel* model);
int sliver_model_num_outputs(const SliverModel* model);
int sliver_model_input(const SliverModel* model, int index, SliverTensorInfo* out);
int sliver_model_output(const SliverModel* model, int index, SliverTensorInfo* out);

/* Run the model: inputs[i] holds input i (info.bytes bytes), outputs[i] receives output i. */
int sliver_model_run(SliverModel* model, const void* const* inputs, void* const* outputs);

/* The artifact's golden data (what --verify runs): input i or output i (is_output != 0),
 * a dense array with the info's dtype and shape, owned by the model. */
int sliver_model_golden(const SliverModel* model, int is_output, int index, const void** data);

/* The artifact's verification tolerances: |got - want| <= atol * max|want| + rtol * |want|. */
int sliver_model_tolerances(const SliverModel* model, double* rtol, double* atol);

/* TVM's worker threads per call for the calling thread (0: TVM's default). */
int sliver_set_threads(int threads);

#ifdef __cplusplus
}
#endif

#endif /* SLIVER_H_ */
