/* Block floating point kernels, bit-identical to host_agent/quantize.py's numpy reference.
 *
 * One pass over memory per call: block exponents read the floats once; quantize reads the floats and writes the
 * lanes (in either byte order, into rows at any stride); dequantize reads the lanes and writes the floats. The
 * arithmetic is the reference's, step for step, in float32:
 *
 *   quantize:    lane = rint(x * f1 * f2)     round half to even (default rounding mode)
 *   dequantize:  y    = (float)lane * f1 * f2
 *
 * where f1 * f2 = 2**shift are the factors quantize.py's _factors computes: one factor (f2 = 1, an exact no-op)
 * when every block's shift in the call is within float32's normal range, else floor(shift / 2) and the rest for
 * every block. Shifts use int32 arithmetic like the reference's int32 arrays. A lane whose rounded value does not
 * fit int32, or is NaN, becomes INT32_MIN: what x86's conversion instruction, and so the reference's cast, gives.
 * That only happens when a caller's own exponents understate its values (a caller error); blocks the exponents
 * describe always fit.
 *
 * The row loops exist for three instruction sets: AVX2 and SSE2 (x86, picked at run time) and portable C. All
 * three compute the same bits; tests run each against the reference.
 */
#include "quantize.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NA_X86 1
#include <immintrin.h>
#endif

#define SIGN_CLEAR 0x7FFFFFFFu
/* Magnitude bits at or above which a block is non-finite: exponent field 255 (inf, NaN) or 254 (>= 2**127). */
#define NONFINITE_BITS 0x7F000000u
#define MIN_NORMAL_BITS 0x00800000u
#define EXP_MIN (-128)
/* The bits numpy writes for np.nan in float32: the positive quiet NaN. */
#define NAN_BITS 0x7FC00000u
/* Outputs at least this large are written with non-temporal stores where the CPU has them: they would leave the
 * caches before anyone reads them anyway, and streaming skips reading every destination line in first (glibc's
 * memcpy does the same for large copies). A burst of packets stays far below it and stays in cache. */
#define STREAM_BYTES ((size_t)4 << 20)
/* Largest |shift| one float32 factor 2**shift covers while staying a normal number. */
#define ONE_FACTOR_LIMIT 126

/* ---- element helpers (any alignment) ------------------------------------------------------------------------ */

static inline uint32_t load_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, sizeof v); }

static inline float load_f32(const unsigned char *p)
{
    float v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_f32(unsigned char *p, float v) { memcpy(p, &v, sizeof v); }

static inline uint32_t maybe_swap(uint32_t v, bool swap) { return swap ? __builtin_bswap32(v) : v; }

/* rint, then int32; NaN and values outside int32 give INT32_MIN (see the top of this file). */
static inline int32_t round_lane(float y)
{
    if (!(y >= -2147483648.0f && y < 2147483648.0f))
        return INT32_MIN;
    return (int32_t)lrintf(y);
}

/* x * f1 * f2 with each product rounded to float32, as the reference's two in-place multiplications. */
static inline float scale(float x, float f1, float f2)
{
    float y = x * f1;
    y = y * f2;
    return y;
}

/* Elements to store one by one before `dst` reaches an `align`-byte boundary, from where whole vectors can be
 * streamed. Clears *stream (and returns 0) when streaming is off or the 4-byte elements never reach one. */
static inline size_t stream_head(const unsigned char *dst, size_t align, size_t lanes, bool *stream)
{
    size_t off = (size_t)((uintptr_t)dst % align);
    if (!*stream || off % 4 != 0) {
        *stream = false;
        return 0;
    }
    size_t head = off ? (align - off) / 4 : 0;
    return head < lanes ? head : lanes;
}

/* ---- portable C ---------------------------------------------------------------------------------------------- */

static uint32_t max_magnitude_generic(const unsigned char *row, size_t lanes)
{
    uint32_t mx = 0;
    for (size_t j = 0; j < lanes; j++) {
        uint32_t b = load_u32(row + 4 * j) & SIGN_CLEAR;
        mx = b > mx ? b : mx;
    }
    return mx;
}

static void quantize_row_generic(const unsigned char *src, unsigned char *dst, size_t lanes, float f1, float f2,
                                 bool swap, bool stream)
{
    (void)stream;
    for (size_t j = 0; j < lanes; j++) {
        int32_t lane = round_lane(scale(load_f32(src + 4 * j), f1, f2));
        store_u32(dst + 4 * j, maybe_swap((uint32_t)lane, swap));
    }
}

static void dequantize_row_generic(const unsigned char *src, unsigned char *dst, size_t lanes, float f1, float f2,
                                   bool swap, bool stream)
{
    (void)stream;
    for (size_t j = 0; j < lanes; j++) {
        int32_t lane = (int32_t)maybe_swap(load_u32(src + 4 * j), swap);
        store_f32(dst + 4 * j, scale((float)lane, f1, f2));
    }
}

static void requantize_row_generic(const unsigned char *src, unsigned char *dst, size_t lanes, unsigned d, bool swap)
{
    const uint32_t half = (uint32_t)1 << d, below = ((uint32_t)2 << d) - 1;
    for (size_t j = 0; j < lanes; j++) {
        int32_t pre;
        memcpy(&pre, src + 4 * j, 4);
        uint32_t sign = (uint32_t)(pre >> 31); /* all ones for a negative pre-lane */
        uint32_t magnitude = ((uint32_t)pre ^ sign) - sign;
        uint32_t whole = magnitude >> 1, sticky = magnitude & 1;
        uint32_t kept = whole >> (d + 1), rest = whole & below;
        uint32_t up = (uint32_t)(rest > half) | ((uint32_t)(rest == half) & ((sticky | kept) & 1));
        uint32_t lane = ((kept + up) ^ sign) - sign;
        if (swap)
            lane = __builtin_bswap32(lane);
        memcpy(dst + 4 * j, &lane, 4);
    }
}

static const struct na_kernels generic_kernels = {
    "generic", max_magnitude_generic, quantize_row_generic, dequantize_row_generic, requantize_row_generic,
};

#ifdef NA_X86

/* ---- SSE2: 4 lanes at a time ----------------------------------------------------------------------------------
 * cvtps2dq rounds in the current mode (half to even by default) and gives INT32_MIN for NaN and out-of-range
 * values; cvtdq2ps rounds like C's int-to-float conversion. */

__attribute__((target("sse2"))) static inline __m128i max_epi32_sse2(__m128i a, __m128i b)
{
    __m128i gt = _mm_cmpgt_epi32(a, b);
    return _mm_or_si128(_mm_and_si128(gt, a), _mm_andnot_si128(gt, b));
}

/* Byte-reverse each 32-bit lane without SSSE3's pshufb: swap the 16-bit halves, then the bytes of each half. */
__attribute__((target("sse2"))) static inline __m128i bswap32_sse2(__m128i v)
{
    v = _mm_shufflehi_epi16(_mm_shufflelo_epi16(v, 0xB1), 0xB1);
    return _mm_or_si128(_mm_slli_epi16(v, 8), _mm_srli_epi16(v, 8));
}

__attribute__((target("sse2"))) static uint32_t max_magnitude_sse2(const unsigned char *row, size_t lanes)
{
    const __m128i clear = _mm_set1_epi32((int)SIGN_CLEAR);
    __m128i m0 = _mm_setzero_si128(), m1 = _mm_setzero_si128();
    size_t j = 0;
    for (; j + 8 <= lanes; j += 8) {
        m0 = max_epi32_sse2(m0, _mm_and_si128(_mm_loadu_si128((const __m128i *)(row + 4 * j)), clear));
        m1 = max_epi32_sse2(m1, _mm_and_si128(_mm_loadu_si128((const __m128i *)(row + 4 * j + 16)), clear));
    }
    uint32_t part[4];
    _mm_storeu_si128((__m128i *)part, max_epi32_sse2(m0, m1));
    uint32_t mx = max_magnitude_generic(row + 4 * j, lanes - j);
    for (int i = 0; i < 4; i++)
        mx = part[i] > mx ? part[i] : mx;
    return mx;
}

__attribute__((target("sse2"))) static inline void store_sse2(unsigned char *p, __m128i v, bool stream)
{
    if (stream)
        _mm_stream_si128((__m128i *)p, v);
    else
        _mm_storeu_si128((__m128i *)p, v);
}

__attribute__((target("sse2"))) static void quantize_row_sse2(const unsigned char *src, unsigned char *dst,
                                                               size_t lanes, float f1, float f2, bool swap,
                                                               bool stream)
{
    const __m128 v1 = _mm_set1_ps(f1), v2 = _mm_set1_ps(f2);
    size_t j = stream_head(dst, 16, lanes, &stream);
    quantize_row_generic(src, dst, j, f1, f2, swap, false);
    for (; j + 4 <= lanes; j += 4) {
        __m128 y = _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps((const float *)(src + 4 * j)), v1), v2);
        __m128i lane = _mm_cvtps_epi32(y);
        if (swap)
            lane = bswap32_sse2(lane);
        store_sse2(dst + 4 * j, lane, stream);
    }
    quantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, f1, f2, swap, false);
}

__attribute__((target("sse2"))) static void dequantize_row_sse2(const unsigned char *src, unsigned char *dst,
                                                                 size_t lanes, float f1, float f2, bool swap,
                                                                 bool stream)
{
    const __m128 v1 = _mm_set1_ps(f1), v2 = _mm_set1_ps(f2);
    size_t j = stream_head(dst, 16, lanes, &stream);
    dequantize_row_generic(src, dst, j, f1, f2, swap, false);
    for (; j + 4 <= lanes; j += 4) {
        __m128i lane = _mm_loadu_si128((const __m128i *)(src + 4 * j));
        if (swap)
            lane = bswap32_sse2(lane);
        __m128 y = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(lane), v1), v2);
        store_sse2(dst + 4 * j, _mm_castps_si128(y), stream);
    }
    dequantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, f1, f2, swap, false);
}

/* Pre-lanes to lanes (na_requantize), 4 at a time: every value compared is below 2**31, so signed compares do. */
__attribute__((target("sse2"))) static void requantize_row_sse2(const unsigned char *src, unsigned char *dst,
                                                                size_t lanes, unsigned d, bool swap)
{
    const __m128i one = _mm_set1_epi32(1), count = _mm_cvtsi32_si128((int)d + 1);
    const __m128i half = _mm_set1_epi32((int32_t)((uint32_t)1 << d));
    const __m128i below = _mm_set1_epi32((int32_t)(((uint32_t)2 << d) - 1));
    size_t j = 0;
    for (; j + 4 <= lanes; j += 4) {
        __m128i pre = _mm_loadu_si128((const __m128i *)(src + 4 * j));
        __m128i sign = _mm_srai_epi32(pre, 31);
        __m128i magnitude = _mm_sub_epi32(_mm_xor_si128(pre, sign), sign);
        __m128i whole = _mm_srli_epi32(magnitude, 1);
        __m128i kept = _mm_srl_epi32(whole, count), rest = _mm_and_si128(whole, below);
        __m128i odd = _mm_and_si128(_mm_or_si128(magnitude, kept), one); /* sticky bit, or kept is odd */
        __m128i up = _mm_or_si128(_mm_and_si128(_mm_cmpgt_epi32(rest, half), one),
                                  _mm_and_si128(_mm_cmpeq_epi32(rest, half), odd));
        __m128i lane = _mm_sub_epi32(_mm_xor_si128(_mm_add_epi32(kept, up), sign), sign);
        _mm_storeu_si128((__m128i *)(dst + 4 * j), swap ? bswap32_sse2(lane) : lane);
    }
    requantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, d, swap);
}

static const struct na_kernels sse2_kernels = {
    "sse2", max_magnitude_sse2, quantize_row_sse2, dequantize_row_sse2, requantize_row_sse2,
};

/* ---- AVX2: 8 lanes at a time, byte order by one shuffle (the identity when no swap is needed) -------------- */

__attribute__((target("avx2"))) static inline __m256i byte_order_avx2(bool swap)
{
    return swap ? _mm256_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12,
                                   3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12)
                : _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                   0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

__attribute__((target("avx2"))) static uint32_t max_magnitude_avx2(const unsigned char *row, size_t lanes)
{
    const __m256i clear = _mm256_set1_epi32((int)SIGN_CLEAR);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    size_t j = 0;
    /* Magnitudes are below 2**31, so the signed max is the unsigned one. */
    for (; j + 16 <= lanes; j += 16) {
        m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(row + 4 * j)), clear));
        m1 = _mm256_max_epi32(m1,
                              _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(row + 4 * j + 32)), clear));
    }
    m0 = _mm256_max_epi32(m0, m1);
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
    uint32_t mx = (uint32_t)_mm_cvtsi128_si32(m);
    uint32_t rest = max_magnitude_generic(row + 4 * j, lanes - j);
    return rest > mx ? rest : mx;
}

__attribute__((target("avx2"))) static inline void store_avx2(unsigned char *p, __m256i v, bool stream)
{
    if (stream)
        _mm256_stream_si256((__m256i *)p, v);
    else
        _mm256_storeu_si256((__m256i *)p, v);
}

__attribute__((target("avx2"))) static void quantize_row_avx2(const unsigned char *src, unsigned char *dst,
                                                               size_t lanes, float f1, float f2, bool swap,
                                                               bool stream)
{
    const __m256 v1 = _mm256_set1_ps(f1), v2 = _mm256_set1_ps(f2);
    const __m256i order = byte_order_avx2(swap);
    size_t j = stream_head(dst, 32, lanes, &stream);
    quantize_row_generic(src, dst, j, f1, f2, swap, false);
    for (; j + 8 <= lanes; j += 8) {
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps((const float *)(src + 4 * j)), v1), v2);
        store_avx2(dst + 4 * j, _mm256_shuffle_epi8(_mm256_cvtps_epi32(y), order), stream);
    }
    quantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, f1, f2, swap, false);
}

__attribute__((target("avx2"))) static void dequantize_row_avx2(const unsigned char *src, unsigned char *dst,
                                                                 size_t lanes, float f1, float f2, bool swap,
                                                                 bool stream)
{
    const __m256 v1 = _mm256_set1_ps(f1), v2 = _mm256_set1_ps(f2);
    const __m256i order = byte_order_avx2(swap);
    size_t j = stream_head(dst, 32, lanes, &stream);
    dequantize_row_generic(src, dst, j, f1, f2, swap, false);
    for (; j + 8 <= lanes; j += 8) {
        __m256i lane = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(src + 4 * j)), order);
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(lane), v1), v2);
        store_avx2(dst + 4 * j, _mm256_castps_si256(y), stream);
    }
    dequantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, f1, f2, swap, false);
}

__attribute__((target("avx2"))) static void requantize_row_avx2(const unsigned char *src, unsigned char *dst,
                                                                size_t lanes, unsigned d, bool swap)
{
    const __m256i one = _mm256_set1_epi32(1), order = byte_order_avx2(swap);
    const __m128i count = _mm_cvtsi32_si128((int)d + 1);
    const __m256i half = _mm256_set1_epi32((int32_t)((uint32_t)1 << d));
    const __m256i below = _mm256_set1_epi32((int32_t)(((uint32_t)2 << d) - 1));
    size_t j = 0;
    for (; j + 8 <= lanes; j += 8) {
        __m256i pre = _mm256_loadu_si256((const __m256i *)(src + 4 * j));
        __m256i sign = _mm256_srai_epi32(pre, 31);
        __m256i magnitude = _mm256_sub_epi32(_mm256_xor_si256(pre, sign), sign);
        __m256i whole = _mm256_srli_epi32(magnitude, 1);
        __m256i kept = _mm256_srl_epi32(whole, count), rest = _mm256_and_si256(whole, below);
        __m256i odd = _mm256_and_si256(_mm256_or_si256(magnitude, kept), one);
        __m256i up = _mm256_or_si256(_mm256_and_si256(_mm256_cmpgt_epi32(rest, half), one),
                                     _mm256_and_si256(_mm256_cmpeq_epi32(rest, half), odd));
        __m256i lane = _mm256_sub_epi32(_mm256_xor_si256(_mm256_add_epi32(kept, up), sign), sign);
        _mm256_storeu_si256((__m256i *)(dst + 4 * j), _mm256_shuffle_epi8(lane, order));
    }
    requantize_row_generic(src + 4 * j, dst + 4 * j, lanes - j, d, swap);
}

static const struct na_kernels avx2_kernels = {
    "avx2", max_magnitude_avx2, quantize_row_avx2, dequantize_row_avx2, requantize_row_avx2,
};

#endif /* NA_X86 */

/* ---- selection ----------------------------------------------------------------------------------------------- */

const struct na_kernels *na_active = &generic_kernels;

static const struct na_kernels *available[4];
static const char *available_names[4];

static void find_available(void)
{
    if (available[0])
        return;
    size_t n = 0;
#ifdef NA_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        available[n++] = &avx2_kernels;
    if (__builtin_cpu_supports("sse2"))
        available[n++] = &sse2_kernels;
#endif
    available[n++] = &generic_kernels;
    for (size_t i = 0; i < n; i++)
        available_names[i] = available[i]->name;
}

const char *const *na_available_kernels(void)
{
    find_available();
    return available_names;
}

bool na_select_kernels(const char *name)
{
    find_available();
    for (size_t i = 0; available[i]; i++) {
        if (name == NULL || strcmp(name, available[i]->name) == 0) {
            na_active = available[i];
            return true;
        }
    }
    return false;
}

/* ---- per-block work: exponents, scale factors ------------------------------------------------------------ */

static inline int64_t int_at(struct na_ints a, size_t i)
{
    const unsigned char *p = a.data + (ptrdiff_t)i * a.stride;
    switch (a.itemsize) {
    case 1:
        return (int8_t)*p;
    case 2: {
        int16_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    case 4: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    default: {
        int64_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    }
}

/* int32 wrap-around, as numpy's int32 arrays compute. */
static inline int32_t wrap32(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }

/* Python's s // 2 (C's division truncates toward zero). */
static inline int32_t floor_half(int32_t s) { return s >= 0 ? s / 2 : (int32_t)(-(((int64_t)1 - s) / 2)); }

/* The reference's exponent of a block from its largest magnitude bits (frexp of that value). */
static inline int8_t exponent_of(uint32_t mx, uint8_t *nonfinite)
{
    *nonfinite = mx >= NONFINITE_BITS;
    if (*nonfinite || mx == 0)
        return EXP_MIN;
    if (mx >= MIN_NORMAL_BITS)
        return (int8_t)((int32_t)(mx >> 23) - 126); /* [2**(f-127), 2**(f-126)) for exponent field f */
    int bits = 32 - __builtin_clz(mx);            /* denormal: [2**(bits-150), 2**(bits-149)) */
    return (int8_t)(bits - 149 < EXP_MIN ? EXP_MIN : bits - 149);
}

struct scale_plan {
    int32_t base;
    bool negate; /* dequantize: 2**-(base - E) */
    bool split;  /* some block's shift leaves float32's normal range: two factors for every block */
};

/* The reference converts exponents to int32 (wrapping) before computing the shift. */
static inline int32_t block_shift(const struct scale_plan *p, int64_t e)
{
    int32_t s = wrap32((int64_t)p->base - wrap32(e));
    return p->negate ? wrap32(-(int64_t)s) : s;
}

/* 2**e in float32: exact bits in the normal range, ldexpf (0, denormal or inf, as numpy's ldexp) outside it. */
static inline float pow2f(int32_t e)
{
    if (e < -126 || e > 127)
        return ldexpf(1.0f, e);
    uint32_t bits = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static struct scale_plan make_plan(struct na_ints shared, size_t rows, int32_t base, bool negate)
{
    struct scale_plan p = {base, negate, false};
    for (size_t i = 0; i < rows && !p.split; i++) {
        int32_t s = block_shift(&p, int_at(shared, i));
        p.split = s > ONE_FACTOR_LIMIT || s < -ONE_FACTOR_LIMIT;
    }
    return p;
}

static inline void block_factors(const struct scale_plan *p, int64_t e, float *f1, float *f2)
{
    int32_t s = block_shift(p, e);
    if (!p->split) {
        *f1 = pow2f(s);
        *f2 = 1.0f;
        return;
    }
    int32_t half = floor_half(s);
    *f1 = pow2f(half);
    *f2 = pow2f(s - half);
}

/* ---- whole arrays -------------------------------------------------------------------------------------------- */

void na_block_exponents(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes,
                        unsigned char *exps, ptrdiff_t exps_stride, unsigned char *nonfinite,
                        ptrdiff_t nonfinite_stride)
{
    const struct na_kernels *k = na_active;
    for (size_t i = 0; i < rows; i++) {
        uint8_t flag;
        int8_t e = exponent_of(k->max_magnitude(src + (ptrdiff_t)i * src_stride, lanes), &flag);
        memcpy(exps + (ptrdiff_t)i * exps_stride, &e, 1);
        nonfinite[(ptrdiff_t)i * nonfinite_stride] = flag;
    }
}

void na_quantize(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes, struct na_ints shared,
                 int32_t scale_base, struct na_ints own, struct na_ints nonfinite, unsigned char *dst,
                 ptrdiff_t dst_stride, bool dst_swap)
{
    const struct na_kernels *k = na_active;
    const struct scale_plan plan = make_plan(shared, rows, scale_base, false);
    const bool stream = 4 * rows * lanes >= STREAM_BYTES;
    for (size_t i = 0; i < rows; i++) {
        unsigned char *d = dst + (ptrdiff_t)i * dst_stride;
        int64_t e = int_at(shared, i);
        if (int_at(nonfinite, i) != 0 || int_at(own, i) > e) {
            memset(d, 0, 4 * lanes);
            continue;
        }
        float f1, f2;
        block_factors(&plan, e, &f1, &f2);
        k->quantize_row(src + (ptrdiff_t)i * src_stride, d, lanes, f1, f2, dst_swap, stream);
    }
    if (stream)
        atomic_thread_fence(memory_order_seq_cst); /* streamed stores are weakly ordered */
}

void na_dequantize(const unsigned char *src, ptrdiff_t src_stride, bool src_swap, size_t rows, size_t lanes,
                   struct na_ints shared, int32_t scale_base, struct na_ints nonfinite, unsigned char *dst,
                   ptrdiff_t dst_stride)
{
    const struct na_kernels *k = na_active;
    const struct scale_plan plan = make_plan(shared, rows, scale_base, true);
    const bool stream = 4 * rows * lanes >= STREAM_BYTES;
    for (size_t i = 0; i < rows; i++) {
        unsigned char *d = dst + (ptrdiff_t)i * dst_stride;
        if (nonfinite.data && int_at(nonfinite, i) != 0) {
            for (size_t j = 0; j < lanes; j++)
                store_u32(d + 4 * j, NAN_BITS);
            continue;
        }
        float f1, f2;
        block_factors(&plan, int_at(shared, i), &f1, &f2);
        k->dequantize_row(src + (ptrdiff_t)i * src_stride, d, lanes, f1, f2, src_swap, stream);
    }
    if (stream)
        atomic_thread_fence(memory_order_seq_cst); /* streamed stores are weakly ordered */
}

void na_requantize(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes, struct na_ints own,
                   struct na_ints shared, unsigned char *dst, ptrdiff_t dst_stride, bool dst_swap)
{
    for (size_t i = 0; i < rows; i++) {
        unsigned char *d = dst + (ptrdiff_t)i * dst_stride;
        int64_t own_e = int_at(own, i), shared_e = int_at(shared, i);
        /* |pre| < 2**31, so floor(2|t|) = |pre| >> 1 < 2**30: a shift by d + 1 >= 31 leaves nothing, not even a half */
        if (own_e > shared_e || shared_e - own_e > 30) {
            memset(d, 0, 4 * lanes);
            continue;
        }
        na_active->requantize_row(src + (ptrdiff_t)i * src_stride, d, lanes, (unsigned)(shared_e - own_e), dst_swap);
    }
}
