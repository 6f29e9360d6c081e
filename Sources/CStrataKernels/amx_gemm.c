// bf16x3 matmuls on AMX tiles (strata_amx.h). Why a kernel of our own: oneDNN 2.6 (Debian's)
// runs plain bf16 products at 350-490 GFLOP/s on two Sapphire Rapids cores, where one core's
// tiles do ~2400 without loads (both cores busy) and ~1100 in this kernel; three passes at
// oneDNN's rate would be no faster than f32 sgemm. The split pieces are made here too: x once
// per product, the weight rows into panels per call (callers spread both over their workers).
//
// Layouts (bf16 values):
// - split x: per row, per block j of 32 inputs, 32 hi then 32 lo values (a tile row each);
// - a weight panel: 16 weight rows; per block j a hi tile and a lo tile, each 16 pairs of
//   inputs by 16 weight rows by 2 (AMX's pair-interleaved "VNNI" layout for the B operand).
// The main block of the product is 32 rows by 32 weight rows (block_product_wide: four f32
// accumulator tiles, 8 tile loads per 12 tile products); a last odd panel or an edge takes
// 32 rows by 16 (block_product: two accumulators, 6 loads per 6 products).
#include "strata_amx.h"
#include "strata_dot.h"
#include "cpu_features.h"
#include "lanes.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define STRATA_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma,amx-tile,amx-bf16")))
#define STRATA_HAS_AMX 1
#endif

// 64 bytes past the blocks: with a row stride of a power of two (4 KiB for k = 1024) the 32 rows
// of a block map to the same L1 sets, and a chunk of them could not stay in L1.
long strata_amx_split_width(int k) { return 64L * ((k + 31) / 32) + 32; }

#if STRATA_HAS_AMX
int strata_amx_bf16_supported(void) {
    static int answer = -1;  // racing first calls compute the same value
    if (answer >= 0) return answer;
    unsigned ecx = 0, a, b, c, d;
    int ok = strata_avx512_base(&ecx) && __get_cpuid_count(7, 0, &a, &b, &c, &d);
    int amx = ok && ((d >> 22) & 1) && ((d >> 24) & 1);  // AMX-BF16, AMX-TILE
    unsigned a1 = 0, b1, c1, d1;
    int bf16 = amx && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && ((a1 >> 5) & 1);  // AVX512-BF16
    unsigned lo = 0, hi;
    if (bf16) __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    int os = bf16 && (lo & (3u << 17)) == (3u << 17);  // XTILECFG, XTILEDATA
    // Linux hands out the 8 KiB tile state only to processes that ask (ARCH_REQ_XCOMP_PERM
    // for XFEATURE_XTILEDATA); without it the first tile instruction faults.
    answer = os && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return answer;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

STRATA_AMX_TARGET
static void configure_tiles(void) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) { config.bytes_per_row[t] = 64; config.rows[t] = 16; }
    _tile_loadconfig(&config);
}

// 32 floats (masked past `count`) as hi and lo bf16 halves.
STRATA_AMX_TARGET __attribute__((always_inline))
static inline void split32(__m512 v0, __m512 v1, uint16_t *hi, uint16_t *lo) {
    __m512bh h = _mm512_cvtne2ps_pbh(v1, v0);
    __m512i bits = (__m512i)h;
    __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bits)), 16));
    __m512 h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bits, 1)), 16));
    __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(v1, h1), _mm512_sub_ps(v0, h0));
    _mm512_storeu_si512(hi, bits);
    _mm512_storeu_si512(lo, (__m512i)l);
}

// One row of k values of `type` into split form (hi and lo per block of 32; zero padding).
STRATA_AMX_TARGET
static void split_row(const char *row, int type, int k, uint16_t *out) {
    long size = type == STRATA_DOT_F32 ? 4 : 2;
    for (int j = 0; j < k; j += 32) {
        int left = k - j;
        __mmask16 m0 = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? (__mmask16)0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        __m512 v0 = strata_widen16(row + j * size, type, m0), v1 = strata_widen16(row + (j + 16) * size, type, m1);
        split32(v0, v1, out + 2 * j, out + 2 * j + 32);
    }
}

STRATA_AMX_TARGET
void strata_amx_split_x(const float *x, int rows, int k, uint16_t *a) {
    long width = strata_amx_split_width(k);
    for (int r = 0; r < rows; r++) split_row((const char *)(x + (long)r * k), STRATA_DOT_F32, k, a + r * width);
}

// Weight rows [row0, row0 + count) (count <= 16) as one panel. The rows are split into a
// row-major scratch first, then each tile row gathers one pair of inputs from 16 weight rows.
STRATA_AMX_TARGET
static void split_panel(const char *w, int type, int k, long row0, int count, uint16_t *scratch, uint16_t *panel) {
    long width = strata_amx_split_width(k), size = type == STRATA_DOT_F32 ? 4 : 2, blocks = (k + 31) / 32;
    for (int c = 0; c < 16; c++) {
        if (c < count) split_row(w + (row0 + c) * (long)k * size, type, k, scratch + c * width);
        else memset(scratch + c * width, 0, width * 2);
    }
    // Pairs of bf16 as 32-bit lanes: weight row c's pair p of block j is lane c*width/2 + j*32 + p
    // (hi) or + 16 (lo).
    const int *pairs = (const int *)scratch;
    __m512i rowsAt = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                        _mm512_set1_epi32((int)(width / 2)));
    for (long j = 0; j < blocks; j++) {
        uint16_t *tile = panel + j * 1024;
        for (int p = 0; p < 16; p++) {
            _mm512_storeu_si512(tile + p * 32, _mm512_i32gather_epi32(rowsAt, pairs + j * 32 + p, 4));
            _mm512_storeu_si512(tile + 512 + p * 32, _mm512_i32gather_epi32(rowsAt, pairs + j * 32 + 16 + p, 4));
        }
    }
}

// Blocks [j0, j1) of one 32-row by 16-column block into out (full block, row stride ldc), or
// through `partial` (a 32 x 16 buffer) at the edges. `first`: start from zero.
STRATA_AMX_TARGET
static void block_product(const uint16_t *a, long width, const uint16_t *panel, long j0, long j1, float *c, long ldc, int first) {
    long stride = width * 2;
    if (first) { _tile_zero(0); _tile_zero(1); }
    else { _tile_loadd(0, c, ldc * 4); _tile_loadd(1, c + 16 * ldc, ldc * 4); }
    const uint16_t *a1 = a + 16 * width;
    for (long j = j0; j < j1; j++) {
        const uint16_t *b = panel + j * 1024;
        _tile_loadd(6, b, 64);
        _tile_loadd(7, b + 512, 64);
        _tile_loadd(2, a + j * 64, stride);
        _tile_dpbf16ps(0, 2, 6);
        _tile_dpbf16ps(0, 2, 7);
        _tile_loadd(3, a + j * 64 + 32, stride);
        _tile_dpbf16ps(0, 3, 6);
        _tile_loadd(4, a1 + j * 64, stride);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + j * 64 + 32, stride);
        _tile_dpbf16ps(1, 5, 6);
    }
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16 * ldc, ldc * 4);
}

// Blocks [j0, j1) of a 32-row by 32-column block (panels p and p + 1, a full block of out): four
// accumulator tiles, and per block of inputs 8 tile loads for 12 tile products. The pieces are
// taken in the order (x lo, w hi), (x hi, w hi), (x hi, w lo), so each step replaces only one
// side; the tile loads, not the products, are what bounds these kernels.
STRATA_AMX_TARGET
static void block_product_wide(const uint16_t *a, long width, const uint16_t *panel, long panelValues, long j0, long j1, float *c,
                               long ldc, int first) {
    long stride = width * 2;
    if (first) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
    else {
        _tile_loadd(0, c, ldc * 4); _tile_loadd(1, c + 16, ldc * 4);
        _tile_loadd(2, c + 16 * ldc, ldc * 4); _tile_loadd(3, c + 16 * ldc + 16, ldc * 4);
    }
    const uint16_t *a1 = a + 16 * width;
    for (long j = j0; j < j1; j++) {
        const uint16_t *b0 = panel + j * 1024, *b1 = b0 + panelValues;
        _tile_loadd(4, a + j * 64 + 32, stride);
        _tile_loadd(6, b0, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b1, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + j * 64 + 32, stride);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(4, a + j * 64, stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + j * 64, stride);
        _tile_dpbf16ps(2, 5, 6);
        _tile_loadd(6, b0 + 512, 64);
        _tile_dpbf16ps(3, 5, 7);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        _tile_loadd(7, b1 + 512, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ldc * 4); _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * ldc, ldc * 4); _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

long strata_amx_panel_values(int k) { return 1024L * ((k + 31) / 32); }

long strata_amx_group_columns(int k) {
    // ~1 MiB of panels, an even number of them (the wide blocks take pairs).
    long panels = (1L << 20) / (strata_amx_panel_values(k) * 2) / 2 * 2;
    return 16 * (panels < 2 ? 2 : panels);
}

STRATA_AMX_TARGET
void strata_amx_split_weights(const void *w, int type, int k, long n0, long n1, uint16_t *panels) {
    if (n1 <= n0) return;
    long width = strata_amx_split_width(k), panelValues = strata_amx_panel_values(k);
    uint16_t *scratch = aligned_alloc(64, (size_t)(16 * width * 2 + 63) / 64 * 64);
    for (long row = n0, p = 0; row < n1; row += 16, p++) {
        int rows = n1 - row < 16 ? (int)(n1 - row) : 16;
        split_panel((const char *)w, type, k, row, rows, scratch, panels + p * panelValues);
    }
    free(scratch);
}

STRATA_AMX_TARGET
void strata_amx_split_product(int r0, int r1, int k, const uint16_t *a, const uint16_t *panels, long columns, float *out, long ldc,
                              int accumulate) {
    if (r1 <= r0 || columns <= 0) return;
    long width = strata_amx_split_width(k), blocks = (k + 31) / 32, panelValues = strata_amx_panel_values(k);
    long count = (columns + 15) / 16;
    // A chunk of blocks keeps a row block's 32 rows of x in L1 (8 blocks: 32 KiB) while it
    // passes over every panel; the panels (a caller's group, ~1 MiB) stay in L2.
    const long chunk = 8;
    float partial[32 * 16] __attribute__((aligned(64)));
    configure_tiles();
    for (int r = r0; r < r1; r += STRATA_AMX_ROWS) {
        int rows = r1 - r < STRATA_AMX_ROWS ? r1 - r : STRATA_AMX_ROWS;
        const uint16_t *ar = a + (long)r * width;
        for (long j = 0; j < blocks; j += chunk) {
            long j1 = j + chunk < blocks ? j + chunk : blocks;
            int first = j == 0 && !accumulate;
            for (long p = 0; p < count; p++) {
                int cols = columns - p * 16 < 16 ? (int)(columns - p * 16) : 16;
                float *c = out + (long)r * ldc + p * 16;
                if (rows == STRATA_AMX_ROWS && columns - p * 16 >= 32) {
                    block_product_wide(ar, width, panels + p * panelValues, panelValues, j, j1, c, ldc, first);
                    p++;
                    continue;
                }
                if (rows == STRATA_AMX_ROWS && cols == 16) {
                    block_product(ar, width, panels + p * panelValues, j, j1, c, ldc, first);
                    continue;
                }
                if (!first) {
                    memset(partial, 0, sizeof partial);
                    for (int i = 0; i < rows; i++) memcpy(partial + i * 16, c + (long)i * ldc, cols * 4);
                }
                block_product(ar, width, panels + p * panelValues, j, j1, partial, 16, first);
                for (int i = 0; i < rows; i++) memcpy(c + (long)i * ldc, partial + i * 16, cols * 4);
            }
        }
    }
    _tile_release();
}

#else
int strata_amx_bf16_supported(void) { return 0; }
void strata_amx_split_x(const float *x, int rows, int k, uint16_t *a) { (void)x; (void)rows; (void)k; (void)a; }
long strata_amx_panel_values(int k) { (void)k; return 0; }
long strata_amx_group_columns(int k) { (void)k; return 32; }
void strata_amx_split_weights(const void *w, int type, int k, long n0, long n1, uint16_t *panels) {
    (void)w; (void)type; (void)k; (void)n0; (void)n1; (void)panels;
}
void strata_amx_split_product(int r0, int r1, int k, const uint16_t *a, const uint16_t *panels, long columns, float *out, long ldc,
                              int accumulate) {
    (void)r0; (void)r1; (void)k; (void)a; (void)panels; (void)columns; (void)out; (void)ldc; (void)accumulate;
}
#endif
