// oneDNN's C API, for its types only: Strata opens libdnnl with dlopen at run time
// (OneDNN.swift), so the library is optional on the machine that runs the binary, and a
// missing oneDNN means the CPU backend's own kernels, never a failed start.
#include <dnnl.h>

// The function types Strata looks up with dlsym, named after the functions they hold.
typedef __typeof__(&dnnl_engine_create) strata_dnnl_engine_create;
typedef __typeof__(&dnnl_stream_create) strata_dnnl_stream_create;
typedef __typeof__(&dnnl_memory_desc_init_by_strides) strata_dnnl_memory_desc_init_by_strides;
typedef __typeof__(&dnnl_memory_desc_init_by_tag) strata_dnnl_memory_desc_init_by_tag;
typedef __typeof__(&dnnl_matmul_desc_init) strata_dnnl_matmul_desc_init;
typedef __typeof__(&dnnl_primitive_desc_create) strata_dnnl_primitive_desc_create;
typedef __typeof__(&dnnl_primitive_desc_query) strata_dnnl_primitive_desc_query;
typedef __typeof__(&dnnl_primitive_desc_destroy) strata_dnnl_primitive_desc_destroy;
typedef __typeof__(&dnnl_primitive_create) strata_dnnl_primitive_create;
typedef __typeof__(&dnnl_primitive_execute) strata_dnnl_primitive_execute;
typedef __typeof__(&dnnl_primitive_destroy) strata_dnnl_primitive_destroy;
typedef __typeof__(&dnnl_memory_create) strata_dnnl_memory_create;
typedef __typeof__(&dnnl_memory_destroy) strata_dnnl_memory_destroy;
typedef __typeof__(&dnnl_stream_wait) strata_dnnl_stream_wait;
typedef __typeof__(&dnnl_primitive_attr_create) strata_dnnl_primitive_attr_create;
typedef __typeof__(&dnnl_primitive_attr_destroy) strata_dnnl_primitive_attr_destroy;
typedef __typeof__(&dnnl_primitive_attr_set_scratchpad_mode) strata_dnnl_primitive_attr_set_scratchpad_mode;
typedef __typeof__(&dnnl_primitive_desc_query_md) strata_dnnl_primitive_desc_query_md;
typedef __typeof__(&dnnl_memory_desc_get_size) strata_dnnl_memory_desc_get_size;
typedef void (*strata_omp_set_num_threads)(int);

// Argument indices (macros that alias other macros do not import into Swift).
static const int strata_dnnl_arg_src = DNNL_ARG_SRC;
static const int strata_dnnl_arg_weights = DNNL_ARG_WEIGHTS;
static const int strata_dnnl_arg_bias = DNNL_ARG_BIAS;
static const int strata_dnnl_arg_dst = DNNL_ARG_DST;
static const int strata_dnnl_arg_scratchpad = DNNL_ARG_SCRATCHPAD;
