/* Block floating point kernels: the compiled twin of host_agent/quantize.py's numpy reference.
 *
 * Pure C, no Python: byte pointers, strides and counts in, results written to caller-owned memory. Arrays are
 * 2-D: `rows` rows of `lanes` 4-byte elements stored back to back, consecutive rows `stride` bytes apart (any
 * stride, any alignment: a row may sit in a packet buffer behind its header). Per-block arrays (exponents,
 * flags) are contiguous, one element per row.
 */
#ifndef NETAGG_QUANTIZE_H
#define NETAGG_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A per-block array of signed integers (exponents, or flags: nonzero = set) as the caller has it: elements of
 * 1, 2, 4 or 8 bytes in this machine's byte order, `stride` bytes apart. */
struct na_ints {
    const unsigned char *data;
    int itemsize;
    ptrdiff_t stride;
};

/* One instruction set's inner loops over a single row. `swap`: lanes are stored in the other byte order;
 * `stream`: write with non-temporal stores where possible (the caller fences after the last row). */
struct na_kernels {
    const char *name;
    /* max over the row of the IEEE bits with the sign cleared (0 for an empty row) */
    uint32_t (*max_magnitude)(const unsigned char *row, size_t lanes);
    /* lane = rint(x * f1 * f2) as int32 (NaN or out of range: INT32_MIN) */
    void (*quantize_row)(const unsigned char *src, unsigned char *dst, size_t lanes, float f1, float f2,
                         bool swap, bool stream);
    /* y = (float)lane * f1 * f2 */
    void (*dequantize_row)(const unsigned char *src, unsigned char *dst, size_t lanes, float f1, float f2,
                           bool swap, bool stream);
    /* pre-lanes (this machine's byte order) -> lanes of an exponent d <= 30 above their own (na_requantize) */
    void (*requantize_row)(const unsigned char *src, unsigned char *dst, size_t lanes, unsigned d, bool swap);
};

/* The kernels in use; na_select_kernels() picks them by name ("avx2", "sse2", "generic"), NULL name: the best
 * this CPU runs. Returns false (and changes nothing) for a name this build or CPU does not have. */
extern const struct na_kernels *na_active;
bool na_select_kernels(const char *name);
/* Names of the kernel sets this build and CPU can run, best first; NULL-terminated. */
const char *const *na_available_kernels(void);

/* Per-block exponent (smallest e with max|x| < 2**e, all-zero: -128, clamped up to -128) and non-finite flag
 * (inf, NaN, or max|x| >= 2**127, exponent then -128) of float32 rows; outputs `out_stride` bytes apart. */
void na_block_exponents(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes,
                        unsigned char *exps, ptrdiff_t exps_stride, unsigned char *nonfinite,
                        ptrdiff_t nonfinite_stride);

/* Quantize float32 rows into int32 lanes with the scale 2**(scale_base - shared[i]) per block; blocks flagged
 * non-finite, or whose own exponent exceeds the shared one, become zeros. */
void na_quantize(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes, struct na_ints shared,
                 int32_t scale_base, struct na_ints own, struct na_ints nonfinite, unsigned char *dst,
                 ptrdiff_t dst_stride, bool dst_swap);

/* Dequantize int32 lanes into float32 rows with the scale 2**-(scale_base - shared[i]); blocks flagged
 * non-finite (nonfinite.data may be NULL: none) become NaN. */
void na_dequantize(const unsigned char *src, ptrdiff_t src_stride, bool src_swap, size_t rows, size_t lanes,
                   struct na_ints shared, int32_t scale_base, struct na_ints nonfinite, unsigned char *dst,
                   ptrdiff_t dst_stride);

/* Pre-lanes (host_agent/quantize.py, prescale_reference: int32 fixed point at the block's own exponent, two bits
 * below the integer part) -> the int32 lanes of the shared exponent, rounding half to even with integers only:
 * the same lanes na_quantize makes from the floats. Blocks whose own exponent exceeds the shared one become
 * zeros. `src` rows are in this machine's byte order. */
void na_requantize(const unsigned char *src, ptrdiff_t src_stride, size_t rows, size_t lanes, struct na_ints own,
                   struct na_ints shared, unsigned char *dst, ptrdiff_t dst_stride, bool dst_swap);

#endif
