/* A stand-in for a profiler's NVTX injection library (what Nsight loads through
 * NVTX_INJECTION64_PATH), used by tests/nvtx.rs: it takes over nvtxRangePushA / nvtxRangePop through
 * NVTX's documented injection interface and writes "push NAME" / "pop" lines to
 * $KILN_FAKE_NVTX_OUT. Constants from nvtxDetail/nvtxTypes.h (NVTX 3). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*fn_ptr)(void);
typedef struct {
    size_t struct_size;
    int (*get_module_function_table)(int module, fn_ptr*** out_table, unsigned int* out_size);
} export_table_callbacks;

enum { ETID_CALLBACKS = 1, CB_MODULE_CORE = 1, CBID_CORE_RANGE_PUSH_A = 9, CBID_CORE_RANGE_POP = 11 };

static FILE* out;
static int depth;

static int range_push_a(const char* msg) {
    fprintf(out, "push %s\n", msg);
    fflush(out);
    return depth++;
}

static int range_pop(void) {
    fprintf(out, "pop\n");
    fflush(out);
    return --depth;
}

int InitializeInjectionNvtx2(const void* (*get_export_table)(uint32_t)) {
    const export_table_callbacks* cb = (const export_table_callbacks*)get_export_table(ETID_CALLBACKS);
    fn_ptr** table = NULL;
    unsigned int size = 0;
    const char* path = getenv("KILN_FAKE_NVTX_OUT");
    if (!cb || !path || !cb->get_module_function_table(CB_MODULE_CORE, &table, &size) || size <= CBID_CORE_RANGE_POP)
        return 0;
    out = fopen(path, "w");
    if (!out) return 0;
    *table[CBID_CORE_RANGE_PUSH_A] = (fn_ptr)range_push_a;
    *table[CBID_CORE_RANGE_POP] = (fn_ptr)range_pop;
    return 1;
}
