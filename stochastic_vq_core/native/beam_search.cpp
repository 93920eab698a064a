// AVQ's beam search, one vector at a time, with the candidates' errors from tables.
//
// The same search as ``beam_search_torch`` in additive_vq.py, with the same floating-point
// operations in the same order, so that both return the same codes (ties aside):
//
//   base[j]      = ||c_j||² - 2 <x, c_j>              (computed by the caller, (N, MK))
//   cross[i][j]  = <c_i, c_j>                           ((MK, MK); +inf between two
//                                                        codewords of one codebook)
//   sums_b[j]    = Σ_{i in beam b, in the order chosen} cross[i][j]
//   candidate    = (base[j] + 2 sums_b[j]) + error_b    (error of beam b extended by j)
//
// A step keeps the ``beam_width`` smallest candidates over every beam and every codeword of
// a codebook the beam has not used, leaving out a candidate whose set of codewords a
// better beam also reaches (``Repeats``); the last step keeps the smallest. Candidates are
// computed a SIMD register at a time and only their minima kept, from which a bound on
// the step's beam_width-th best follows (a sorting network with AVX-512); a second pass
// over the chunks of four registers that can hold candidates within the bound finds them,
// and they are ranked (``Workspace``). A beam's cross sums are summed only once it holds
// four codewords (``Beams``). Where the data decide from one vector to the next which way
// to go (the repeated sets, the lanes kept, the chunks computed again, the group minimum
// that bounds a step), the search takes no branch: a mispredicted one costs more than the
// work it would skip.
//
// SIMD code for AVX-512 and AVX2; elsewhere the same operations on plain arrays of a
// register's width (``Lanes``), which the compiler vectorises for the processor it
// builds for.
//
// Plain C++17 with a C interface, no torch headers: built on first use (a second or two)
// and called through ctypes by ``stochastic_vq_core.native``.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// Appends lanes[i] for each bit i set in mask, and key + i, to values and keys; returns
// how many. Most masks are empty; the others have every lane stored (the arrays have room
// for N past the count), with no branch on which lanes are set.
template <typename T, int N>
int append_lanes(const T* lanes, uint32_t mask, uint32_t key, T* values, uint32_t* keys) {
  if (!mask) return 0;
  int n = 0;
  for (int i = 0; i < N; ++i) {
    values[n] = lanes[i];
    keys[n] = key + uint32_t(i);
    n += (mask >> i) & 1;
  }
  return n;
}

// Bit v_i set for each lane i set in lanes and v_i in 0 ... 63, without a branch.
template <int N>
uint64_t bits_of_lanes(const int32_t* values, uint32_t lanes) {
  uint64_t bits = 0;
  for (int i = 0; i < N; ++i) {
    const uint32_t v = uint32_t(values[i]);
    bits |= uint64_t((lanes >> i) & 1 & uint32_t(v < 64)) << (v & 63);
  }
  return bits;
}

// N values at a time in a plain array: the fallback for any machine, whose loops the
// compiler vectorises where it can, and with N = 1 for runs shorter than a SIMD
// register. The SIMD versions below have the same operations.
template <typename T, int N>
struct Lanes {
  struct V {
    T lane[N];
  };
  static constexpr int width = N;
  static V load(const T* p) {
    V v;
    std::memcpy(v.lane, p, sizeof v.lane);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, v.lane, sizeof v.lane); }
  static V set(T x) {
    V v;
    for (T& lane : v.lane) lane = x;
    return v;
  }
  template <typename F>
  static V each(V a, V b, F f) {  // f(a_i, b_i, i) in lane i
    V v;
    for (int i = 0; i < N; ++i) v.lane[i] = f(a.lane[i], b.lane[i], i);
    return v;
  }
  // b + 2 s: 2 s is exact, so this rounds once, as a fused multiply-add would
  static V twice_plus(V b, V s) { return each(b, s, [](T x, T y, int) { return x + (y + y); }); }
  static V add(V a, V b) { return each(a, b, [](T x, T y, int) { return x + y; }); }
  static V min(V v, V least) {  // NaN v: least
    return each(v, least, [](T x, T y, int) { return x < y ? x : y; });
  }
  static uint32_t at_most(V v, T limit) {  // NaN: 0
    uint32_t mask = 0;
    for (int i = 0; i < N; ++i) mask |= uint32_t(v.lane[i] <= limit) << i;
    return mask;
  }
  static T least(V v) {  // of lanes without NaN
    T least = v.lane[0];
    for (int i = 1; i < N; ++i) least = v.lane[i] < least ? v.lane[i] : least;
    return least;
  }
  static V blank(V v, uint32_t lanes) {  // NaN in the lanes set
    return each(v, v, [lanes](T x, T, int i) {
      return (lanes >> i) & 1 ? std::numeric_limits<T>::quiet_NaN() : x;
    });
  }
  static V min_unless(V v, uint32_t lanes, V least) {  // least in the lanes set
    return min(blank(v, lanes), least);
  }
  static int append(V v, uint32_t mask, uint32_t key, T* values, uint32_t* keys) {
    return append_lanes<T, N>(v.lane, mask, key, values, keys);
  }
  // of int32 lanes (codewords; ``Ints``)
  static uint32_t equal(V a, V b) {
    uint32_t mask = 0;
    for (int i = 0; i < N; ++i) mask |= uint32_t(a.lane[i] == b.lane[i]) << i;
    return mask;
  }
  static V sub(V a, T b) { return each(a, a, [b](T x, T, int) { return x - b; }); }
  static V choose(V v, uint32_t lanes, V other) {  // other where set
    return each(v, other, [lanes](T x, T y, int i) { return (lanes >> i) & 1 ? y : x; });
  }
  static uint64_t bits(V v, uint32_t lanes) { return bits_of_lanes<N>(v.lane, lanes); }
};

template <typename T>
using Scalar = Lanes<T, 1>;

// Ints: lanes of int32 (codewords), compared a register at a time in ``Repeats``.
#if defined(__AVX512F__)
struct Ints {
  using V = __m512i;
  static constexpr int width = 16;
  static V load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(int32_t* p, V v) { _mm512_storeu_si512(p, v); }
  static V set(int32_t v) { return _mm512_set1_epi32(v); }
  static uint32_t equal(V a, V b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static V sub(V a, int32_t b) { return _mm512_sub_epi32(a, _mm512_set1_epi32(b)); }
  static V choose(V v, uint32_t lanes, V other) {
    return _mm512_mask_mov_epi32(v, __mmask16(lanes), other);
  }
  // bit v_i set for each lane i set in lanes and v_i in 0 ... 63 (a shift by 64 or more,
  // or by a negative count read as unsigned, gives 0)
  static uint64_t bits(V v, uint32_t lanes) {
    const __m512i one = _mm512_set1_epi64(1);
    const __m512i low = _mm512_maskz_sllv_epi64(
        __mmask8(lanes), one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v)));
    const __m512i high = _mm512_maskz_sllv_epi64(
        __mmask8(lanes >> 8), one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(v, 1)));
    return uint64_t(_mm512_reduce_or_epi64(_mm512_or_si512(low, high)));  // one reduction
  }
};
struct Floats {
  using V = __m512;
  static constexpr int width = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set(float v) { return _mm512_set1_ps(v); }
  static V twice_plus(V b, V s) { return _mm512_fmadd_ps(_mm512_set1_ps(2.0f), s, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V min(V v, V least) { return _mm512_min_ps(v, least); }  // MINPS: NaN v gives least
  static uint32_t at_most(V v, float limit) {
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(limit), _CMP_LE_OQ);
  }
  static float least(V v) { return _mm512_reduce_min_ps(v); }
  static V blank(V v, uint32_t lanes) {
    return _mm512_mask_mov_ps(v, __mmask16(lanes), _mm512_set1_ps(__builtin_nanf("")));
  }
  static V min_unless(V v, uint32_t lanes, V least) {  // one instruction
    return _mm512_mask_min_ps(least, __mmask16(~lanes), v, least);
  }
  static int append(V v, uint32_t mask, uint32_t key, float* values, uint32_t* keys) {
    // compressed in a register and stored whole (width lanes past the count are spare):
    // faster than a compressing store to memory
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    _mm512_storeu_ps(values, _mm512_maskz_compress_ps(__mmask16(mask), v));
    _mm512_storeu_si512(keys, _mm512_maskz_compress_epi32(
                                  __mmask16(mask), _mm512_add_epi32(_mm512_set1_epi32(int(key)), lane)));
    return __builtin_popcount(mask);
  }
};
struct Doubles {
  using V = __m512d;
  static constexpr int width = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set(double v) { return _mm512_set1_pd(v); }
  static V twice_plus(V b, V s) { return _mm512_fmadd_pd(_mm512_set1_pd(2.0), s, b); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V min(V v, V least) { return _mm512_min_pd(v, least); }
  static uint32_t at_most(V v, double limit) {
    return _mm512_cmp_pd_mask(v, _mm512_set1_pd(limit), _CMP_LE_OQ);
  }
  static double least(V v) { return _mm512_reduce_min_pd(v); }
  static V blank(V v, uint32_t lanes) {
    return _mm512_mask_mov_pd(v, __mmask8(lanes), _mm512_set1_pd(__builtin_nan("")));
  }
  static V min_unless(V v, uint32_t lanes, V least) {
    return _mm512_mask_min_pd(least, __mmask8(~lanes), v, least);
  }
  static int append(V v, uint32_t mask, uint32_t key, double* values, uint32_t* keys) {
    double lanes[8];
    _mm512_storeu_pd(lanes, v);
    return append_lanes<double, 8>(lanes, mask, key, values, keys);
  }
};
#elif defined(__AVX2__)
struct Ints {
  using V = __m256i;
  static constexpr int width = 8;
  static V load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const V*>(p)); }
  static void store(int32_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<V*>(p), v); }
  static V set(int32_t v) { return _mm256_set1_epi32(v); }
  static uint32_t equal(V a, V b) {
    return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b))));
  }
  static V sub(V a, int32_t b) { return _mm256_sub_epi32(a, _mm256_set1_epi32(b)); }
  static V choose(V v, uint32_t lanes, V other) {
    const __m256i bits = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    const __m256i hit = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32(int(lanes)), bits), bits);
    return _mm256_blendv_epi8(v, other, hit);
  }
  static uint64_t bits(V v, uint32_t lanes) {
    int32_t values[8];
    store(values, v);
    return bits_of_lanes<8>(values, lanes);
  }
};
struct Floats {
  using V = __m256;
  static constexpr int width = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set(float v) { return _mm256_set1_ps(v); }
  static V twice_plus(V b, V s) { return _mm256_add_ps(b, _mm256_add_ps(s, s)); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V min(V v, V least) { return _mm256_min_ps(v, least); }  // MINPS: NaN v gives least
  static uint32_t at_most(V v, float limit) {
    return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(limit), _CMP_LE_OQ)));
  }
  static float least(V v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static V blank(V v, uint32_t lanes) {
    const __m256i bits = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    const __m256i hit = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32(int(lanes)), bits), bits);
    return _mm256_blendv_ps(v, _mm256_set1_ps(__builtin_nanf("")), _mm256_castsi256_ps(hit));
  }
  static V min_unless(V v, uint32_t lanes, V least) { return min(blank(v, lanes), least); }
  static int append(V v, uint32_t mask, uint32_t key, float* values, uint32_t* keys) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    return append_lanes<float, 8>(lanes, mask, key, values, keys);
  }
};
struct Doubles {
  using V = __m256d;
  static constexpr int width = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set(double v) { return _mm256_set1_pd(v); }
  static V twice_plus(V b, V s) { return _mm256_add_pd(b, _mm256_add_pd(s, s)); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V min(V v, V least) { return _mm256_min_pd(v, least); }
  static uint32_t at_most(V v, double limit) {
    return uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(v, _mm256_set1_pd(limit), _CMP_LE_OQ)));
  }
  static double least(V v) {
    __m128d m = _mm_min_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_min_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static V blank(V v, uint32_t lanes) {
    const __m256i bits = _mm256_set_epi64x(8, 4, 2, 1);
    const __m256i hit = _mm256_cmpeq_epi64(
        _mm256_and_si256(_mm256_set1_epi64x(int64_t(lanes)), bits), bits);
    return _mm256_blendv_pd(v, _mm256_set1_pd(__builtin_nan("")), _mm256_castsi256_pd(hit));
  }
  static V min_unless(V v, uint32_t lanes, V least) { return min(blank(v, lanes), least); }
  static int append(V v, uint32_t mask, uint32_t key, double* values, uint32_t* keys) {
    double lanes[4];
    _mm256_storeu_pd(lanes, v);
    return append_lanes<double, 4>(lanes, mask, key, values, keys);
  }
};
#else
using Ints = Lanes<int32_t, 16>;
using Floats = Lanes<float, 16>;
using Doubles = Lanes<double, 8>;
#endif

template <typename T>
using Simd = std::conditional_t<std::is_same<T, float>::value, Floats, Doubles>;

// The keep-th smallest (1 <= keep <= count) of values[0 ... count), NaN counted as +inf,
// ties alike: the smallest value that at least keep values are no larger than. False
// where no faster way than counting is at hand (then out is left as it is).
template <typename T>
bool kth_smallest(const T*, int, int, T*) { return false; }

// The most values kth_smallest's network takes (a multiple of 16, with keep <= 16; 0: it
// has none for T).
template <typename T>
constexpr int network_values = 0;

#if defined(__AVX512F__)
template <>
constexpr int network_values<float> = 64;

// One step of a bitonic network over 16 lanes: lanes i and i ^ j compared, the larger
// kept where (i & j) != 0 differs from (i & k) != 0.
template <int j, int k>
__m512 exchange(__m512 v) {
  constexpr uint32_t larger = [] {
    uint32_t lanes = 0;
    for (int i = 0; i < 16; ++i) lanes |= uint32_t(((i & j) != 0) != ((i & k) != 0)) << i;
    return lanes;
  }();
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 other = _mm512_permutexvar_ps(_mm512_xor_si512(lane, _mm512_set1_epi32(j)), v);
  return _mm512_mask_blend_ps(__mmask16(larger), _mm512_min_ps(v, other),
                              _mm512_max_ps(v, other));
}

// A bitonic sequence of 16 lanes in ascending order.
inline __m512 merge16(__m512 v) {
  return exchange<1, 16>(exchange<2, 16>(exchange<4, 16>(exchange<8, 16>(v))));
}

// 16 lanes in ascending order.
inline __m512 sort16(__m512 v) {
  v = exchange<1, 2>(v);
  v = exchange<1, 4>(exchange<2, 4>(v));
  v = exchange<1, 8>(exchange<2, 8>(exchange<4, 8>(v)));
  return merge16(v);
}

// Up to network_values, 16 at a time, keep <= 16: each 16 sorted by a network; the
// smallest 16 of two sorted registers are the lane minima of one against the other
// reversed (a bitonic sequence, merged in order).
template <>
inline bool kth_smallest(const float* values, int count, int keep, float* out) {
  if (count % 16 || count > network_values<float> || keep > 16) return false;
  const __m512i reverse = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto load = [&](int k) {  // NaN as +inf
    const __m512 v = _mm512_loadu_ps(values + k);
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                              _mm512_set1_ps(std::numeric_limits<float>::infinity()));
  };
  __m512 sorted = sort16(load(0));
  for (int k = 16; k < count; k += 16) {
    const __m512 other = _mm512_permutexvar_ps(reverse, sort16(load(k)));
    sorted = merge16(_mm512_min_ps(sorted, other));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sorted);
  *out = lanes[keep - 1];
  return true;
}
#endif

// A value and a 32-bit position packed into one unsigned integer that orders as
// (value, position).
template <typename T>
struct Packing;

template <>
struct Packing<float> {
  using type = uint64_t;
  static type pack(float value, uint32_t position) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return type(u) << 32 | position;
  }
  static float value(type packed) {
    uint32_t u = uint32_t(packed >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
  }
  // out[i] = pack(values[i], positions[i]) for i < n; with AVX-512 a register of 8 at a
  // time, reading and writing up to 7 entries past n (the arrays have room for them)
  static void pack_all(const float* values, const uint32_t* positions, int n, type* out) {
#if defined(__AVX512F__)
    const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
    for (int i = 0; i < n; i += 8) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + i));
      const __m256i flip = _mm256_or_si256(_mm256_srai_epi32(u, 31), sign);  // as pack
      const __m512i high = _mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm256_xor_si256(u, flip)), 32);
      const __m512i low = _mm512_cvtepu32_epi64(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(positions + i)));
      _mm512_storeu_si512(out + i, _mm512_or_si512(high, low));
    }
#else
    for (int i = 0; i < n; ++i) out[i] = pack(values[i], positions[i]);
#endif
  }
};

template <>
struct Packing<double> {
  using type = unsigned __int128;
  static type pack(double value, uint32_t position) {
    uint64_t u;
    std::memcpy(&u, &value, sizeof u);
    u = (u >> 63) ? ~u : (u | uint64_t(1) << 63);
    return type(u) << 32 | position;
  }
  static double value(type packed) {
    uint64_t u = uint64_t(packed >> 32);
    u = (u >> 63) ? (u & ~(uint64_t(1) << 63)) : ~u;
    double v;
    std::memcpy(&v, &u, sizeof v);
    return v;
  }
  static void pack_all(const double* values, const uint32_t* positions, int n, type* out) {
    for (int i = 0; i < n; ++i) out[i] = pack(values[i], positions[i]);
  }
};

// How many of values[0 ... count) are <= limit (NaN: not counted).
template <typename T>
int count_at_most(const T* values, int count, T limit) {
  using S = Simd<T>;
  int n = 0, k = 0;
  for (; k + S::width <= count; k += S::width)
    n += __builtin_popcount(S::at_most(S::load(values + k), limit));
  for (; k < count; ++k) n += values[k] <= limit;
  return n;
}

// How many of items[0 ... count) are below item.
inline int count_below(const uint64_t* items, int count, uint64_t item) {
  int n = 0, k = 0;
#if defined(__AVX512F__)
  const __m512i x = _mm512_set1_epi64(int64_t(item));
  for (; k + 8 <= count; k += 8)
    n += __builtin_popcount(_mm512_cmplt_epu64_mask(_mm512_loadu_si512(items + k), x));
#endif
  for (; k < count; ++k) n += items[k] < item;
  return n;
}

inline int count_below(const unsigned __int128* items, int count, unsigned __int128 item) {
  int n = 0;
  for (int k = 0; k < count; ++k) n += items[k] < item;
  return n;
}

// The beams of one step.
template <typename T>
struct Beams {
  Beams(int stages, int total, int most)
      : path(size_t(most) * stages),
        error(most),
        used(most),
        partial(most),
        middle(most),
        latest(most),
        sums(size_t(most) * total) {}

  int count = 0;
  std::vector<int32_t> path;   // (B, M) codewords of each beam, in the order chosen
  std::vector<T> error;        // (B,) error of each beam, less ||x||²
  std::vector<uint64_t> used;  // (B,) bit m: the beam holds a codeword of codebook m
  // A beam's cross sums are (partial + middle) + latest: latest and middle the cross-table
  // rows of its last two codewords, partial those of the codewords before them (the
  // first's row while it holds three, else summed in sums). Two codewords: the first's row
  // and the second's, middle null; one: its row, middle and latest null. Summed only as
  // late as that, the new beams of a step copy nothing until they hold four codewords.
  std::vector<const T*> partial;  // (B,) (MK,) each
  std::vector<const T*> middle;   // (B,) (MK,) each, or null
  std::vector<const T*> latest;   // (B,) (MK,) each, or null
  std::vector<T> sums;            // (B, MK) the partial sums of beams of four or more
};

// Which extensions repeat a better beam's set: a bit matrix of B rows of MK, bit j of
// row b set when beam b extended by codeword j holds the same set as an extension of a
// better beam a (a < b). That is exactly when a holds all but one of b's codewords and j
// (then a's set is b's with that one swapped for j). The better beams are compared with b
// a register of Ints::width beams at a time. (A bit may fall in a codebook b uses: no
// such extension.)
class Repeats {
 public:
  Repeats(int stages, int total, int most)
      : stride_((most + Ints::width - 1) / Ints::width * Ints::width),
        row_words_((total + 63) / 64),
        columns_(size_t(stages) * stride_),
        rows_(size_t(most) * row_words_) {}

  // Set the bits of the beams (count of them, size codewords each in path).
  void find(const int32_t* path, int count, int size, int stages) {
    if (size == 1) {  // single codewords: row b holds the codewords of beams 0 ... b - 1
      for (int b = 1; b < count; ++b) {
        uint64_t* row = this->row(b);
        for (int w = 0; w < row_words_; ++w) row[w] = this->row(b - 1)[w];
        const int32_t c = path[size_t(b - 1) * stages];
        row[c / 64] |= uint64_t(1) << (c % 64);
      }
      return;
    }
    int32_t* columns = columns_.data();  // (size, stride): codeword i of beam a at i, a
    for (int a = 0; a < count; ++a)
      for (int i = 0; i < size; ++i) columns[i * stride_ + a] = path[size_t(a) * stages + i];
    constexpr uint32_t lanes = Ints::width == 32 ? ~0u : (1u << Ints::width) - 1;
    for (int b = 1; b < count; ++b) {
      const int32_t* mine = path + size_t(b) * stages;
      uint64_t* bits = row(b);
      for (int first = 0; first < b; first += Ints::width) {  // beams first ... of b's betters
        const uint32_t better = b - first >= Ints::width ? lanes : (1u << (b - first)) - 1;
        uint32_t missing = 0, twice = 0;  // lanes missing one of b's codewords, two or more
        typename Ints::V lacked = Ints::set(0);  // the codeword a beam holds that b lacks
        for (int i = 0; i < size; ++i) {
          const typename Ints::V c = Ints::load(columns + i * stride_ + first);
          uint32_t held = 0;
          for (int k = 0; k < size; ++k) held |= Ints::equal(c, Ints::set(mine[k]));
          const uint32_t lacks = ~held & lanes;
          twice |= missing & lacks;
          missing |= lacks;
          lacked = Ints::choose(lacked, lacks, c);
        }
        const uint32_t near = missing & ~twice & better;
        if (row_words_ <= 4) {  // no branch: word w from the codewords 64 w ... 64 w + 63
          for (int w = 0; w < row_words_; ++w)
            bits[w] |= Ints::bits(Ints::sub(lacked, 64 * w), near);
          continue;
        }
        if (!near) continue;
        int32_t codewords[Ints::width];
        Ints::store(codewords, lacked);
        for (uint32_t m = near; m; m &= m - 1) {
          const int32_t c = codewords[__builtin_ctz(m)];
          bits[c / 64] |= uint64_t(1) << (c % 64);
        }
      }
    }
  }

  // Row b (all zero where no bit is set).
  const uint64_t* marked(int b) const { return rows_.data() + size_t(b) * row_words_; }

  // Unset every bit of rows 0 ... count - 1 (all of them: which rows have bits set varies
  // too much for a branch).
  void clear(int count) { std::fill(rows_.begin(), rows_.begin() + size_t(count) * row_words_, 0); }

 private:
  uint64_t* row(int b) { return rows_.data() + size_t(b) * row_words_; }

  int stride_, row_words_;
  std::vector<int32_t> columns_;  // (M, stride) the beams' codewords, by position in a beam
  std::vector<uint64_t> rows_;    // (B, ceil(MK / 64))
};

// A run of candidates in a step's buffer: buffer[first + k], k < length, is beam ``beam``
// extended by codeword ``codeword + k``.
template <typename T>
struct Run {
  int beam, first, length;  // codewords first ... first + length - 1
  int chunks;               // of a run longer than a chunk: its first chunk minimum
  const T* sums;            // (MK,) the beam's cross sums are (sums + middle) + latest
  const T* middle;          // (MK,) or null (Beams)
  const T* latest;          // (MK,) or null
  T error;                  // the beam's error
};

// The per-thread state of the search, and its selection of a step's best candidates.
//
// A step's candidates, beam b extended by codeword j, come in runs: a beam's whole row of
// MK (short codebooks, and early steps over codebooks of two registers; the codebooks a
// beam uses then give +inf, from the cross table) or one run per codebook a beam has not
// used (``whole``). A run is computed a SIMD register at a time,
// its repeated sets blanked to NaN, and only its lanes' minima are kept: those of run r
// folded into slot r mod R of G = R * width group minima, and those of each chunk of four
// registers where a run is longer. The keep-th smallest group minimum bounds the keep-th
// smallest candidate from above, since that many groups (disjoint sets of candidates) each
// hold one no larger; the runs, then the chunks, whose minimum is within the bound are
// computed again to find the candidates within it, usually not many more than keep, which
// are ranked. A candidate is known by its key, beam << shift | codeword,
// which orders as (beam, codeword).
template <typename T>
struct Workspace {
  using P = Packing<T>;
  using S = Simd<T>;

  Workspace(int stages, int entries, int most)
      : stages(stages),
        entries(entries),
        most(most),
        total(stages * entries),
        log_entries(__builtin_ctz(unsigned(entries))),
        shift(32 - __builtin_clz(unsigned(total))),
        by_codebook(entries >= 2 * S::width),
        slots(std::max(1, (groups_per_beam(most) * most + S::width - 1) / S::width)),
        beams{Beams<T>(stages, total, most), Beams<T>(stages, total, most)},
        repeats(stages, total, most),
        empty(stages, total, 1),
        runs(size_t(most) * stages),
        minima(size_t(slots) * S::width),
        run_minima(size_t(most) * stages),
        chunk_minima(size_t(most) * (total / chunk + stages) * S::width),
        pending(size_t(most) * (total / chunk + stages)),
        found_values(size_t(most) * total + S::width),  // + a register: see append
        found_keys(size_t(most) * total + S::width),
        items(size_t(most) * total + 8),  // + 8: see smallest
        chosen(most + 1) {
    empty.partial[0] = empty.sums.data();
  }

  // G / B: 4 where kth_smallest's network takes the groups (tighter than 2), else 2
  // (counting costs G²).
  static int groups_per_beam(int most) {
    return 4 * most <= network_values<T> ? 4 : 2;
  }

  static constexpr int chunk = 4 * S::width;  // codewords a chunk minimum covers

  // Begin a step: no runs, no group minimum.
  void start() {
    count = 0;
    chunks = 0;
    slot = 0;
    std::fill(minima.begin(), minima.end(), std::numeric_limits<T>::infinity());
  }

  // A run of beam b over codewords first ... first + length - 1, their errors
  // (base + 2 ((partial + middle) + latest)) + error folded into the group minima.
  void fill(int b, int first, int length, const T* base, const Beams<T>& beams) {
    Run<T>& run = runs[count];
    run = Run<T>{b, first, length, chunks,
                 beams.partial[b], beams.middle[b], beams.latest[b], beams.error[b]};
    T* group = minima.data() + slot * S::width;
    slot = slot + 1 == slots ? 0 : slot + 1;
    if (simd(run)) {
      if (length > chunk) chunks += (length + chunk - 1) / chunk;
      const typename S::V least = least_of(run, base);
      S::store(group, S::min(least, S::load(group)));
      run_minima[count++] = S::least(least);
    } else {
      T least = std::numeric_limits<T>::infinity();
      scan<Scalar<T>>(run, first, first + length, base, [&](int, typename Scalar<T>::V v) {
        least = v.lane[0] < least ? v.lane[0] : least;  // NaN: least
      });
      group[0] = std::min(least, group[0]);
      run_minima[count++] = least;
    }
  }

  bool simd(const Run<T>& run) const {
    return run.first % S::width == 0 && run.length % S::width == 0;
  }

  // The errors of the run's codewords j ... j + L::width - 1, NaN where blanked: where
  // the lowest L::width bits of marks are set (from the run's beam's row of Repeats,
  // shifted to j). No branch: the bits vary from one vector to the next, too often for a
  // branch to be predicted.
  template <typename L>
  static typename L::V errors(const Run<T>& run, const T* base, uint64_t marks,
                              typename L::V error, int j) {
    return L::blank(L::add(extended<L>(run, base, j), error), lanes_of<L>(marks));
  }

  // base + 2 sums of the run's codewords j ... j + L::width - 1: their errors less the
  // beam's.
  template <typename L>
  static typename L::V extended(const Run<T>& run, const T* base, int j) {
    typename L::V sums = L::load(run.sums + j);
    if (run.middle) sums = L::add(sums, L::load(run.middle + j));
    if (run.latest) sums = L::add(sums, L::load(run.latest + j));
    return L::twice_plus(L::load(base + j), sums);
  }

  template <typename L>
  static uint32_t lanes_of(uint64_t marks) {
    return uint32_t(marks) & (L::width == 32 ? ~0u : (1u << L::width) - 1);
  }

  // Calls visit(j, v) for the run's codewords j, a register L::width at a time: v holds
  // the errors of j ... j + width - 1.
  template <typename L, typename Visit>
  void scan(const Run<T>& run, int from, int to, const T* base, Visit visit) const {
    const uint64_t* bits = repeats.marked(run.beam);
    const typename L::V e = L::set(run.error);
    for (int j = from; j < to; j += L::width)
      visit(j, errors<L>(run, base, bits[j / 64] >> (j % 64), e, j));
  }

  // The lane minima of a SIMD run's errors; of a run longer than a chunk, those of each
  // chunk too (less the beam's error), into chunk_minima. The error is added to the
  // minima, not to each candidate: rounding is monotonic, so min_i (t_i + e) rounds as
  // (min_i t_i) + e.
  typename S::V least_of(const Run<T>& run, const T* base) {
    const typename S::V error = S::set(run.error);
    if (run.length <= chunk) return S::add(chunk_least(run, base, run.first), error);
    typename S::V least = S::set(std::numeric_limits<T>::infinity());
    T* minimum = chunk_minima.data() + size_t(run.chunks) * S::width;
    for (int j = run.first; j < run.first + run.length; j += chunk, minimum += S::width) {
      const typename S::V v = chunk_least(run, base, j);
      S::store(minimum, v);
      least = S::min(v, least);
    }
    return S::add(least, error);
  }

  // The lane minima of the run's errors less the beam's, codewords j ... j + chunk - 1 (or
  // to the run's end), in four chains of registers (a minimum waits for the one before).
  typename S::V chunk_least(const Run<T>& run, const T* base, int j) const {
    constexpr int W = S::width;
    // A chunk's bits lie in one word, read once: a run starts at a multiple of a chunk (at
    // 0, or at a codebook's first) or is a codebook of 2 W, and a chunk divides 64.
    static_assert(64 % chunk == 0, "a chunk's bits in one word");
    const uint64_t word = repeats.marked(run.beam)[j / 64] >> (j % 64);
    const int end = run.first + run.length;
    typename S::V least[4];
    for (auto& v : least) v = S::set(std::numeric_limits<T>::infinity());
    for (int c = 0; c < 4 && j + c * W < end; ++c)
      least[c] = S::min_unless(extended<S>(run, base, j + c * W), lanes_of<S>(word >> (c * W)),
                               least[c]);
    return S::min(S::min(least[0], least[1]), S::min(least[2], least[3]));
  }

  // Appends each candidate <= limit to found (value and key), in order of runs, leaving
  // out those of the codebooks their beams use; runs and chunks whose minimum exceeds the
  // limit are skipped. Returns how many.
  int collect(const T* base, T limit, const Beams<T>& beams_now) {
    int n = 0;
    auto append = [&](auto lanes, const Run<T>& run, int from, int to) {
      using L = decltype(lanes);
      const uint32_t key = uint32_t(run.beam) << shift;
      scan<L>(run, from, to, base, [&](int j, typename L::V v) {
        n += L::append(v, L::at_most(v, limit), key | uint32_t(j), found_values.data() + n,
                       found_keys.data() + n);
      });
    };
    int listed = 0;  // chunks pending, for runs longer than one
    for (int r = 0; r < count; ++r) {
      if (!(run_minima[r] <= limit)) continue;
      const Run<T>& run = runs[r];
      const int end = run.first + run.length;
      if (!simd(run)) {
        append(Scalar<T>(), run, run.first, end);
      } else if (run.length <= chunk) {
        append(S(), run, run.first, end);
      } else {  // its chunks within the limit, listed without a branch (which ones varies
                // too much from one vector to the next for one to be predicted)
        const typename S::V error = S::set(run.error);
        const T* minimum = chunk_minima.data() + size_t(run.chunks) * S::width;
        for (int j = run.first; j < end; j += chunk, minimum += S::width) {
          pending[listed] = Pending{r, j};
          listed += S::at_most(S::add(S::load(minimum), error), limit) != 0;
        }
      }
    }
    // (the runs of a step are all longer than a chunk or none: in order either way)
    for (int i = 0; i < listed; ++i) {
      const Run<T>& run = runs[pending[i].run];
      const int first = pending[i].first;
      append(S(), run, first, std::min(first + chunk, run.first + run.length));
    }
    if (whole && !(limit < std::numeric_limits<T>::infinity())) {  // +inf: used ones too
      int kept = 0;
      for (int i = 0; i < n; ++i) {
        const uint64_t used = beams_now.used[beam_of(found_keys[i])];
        if (used >> (codeword_of(found_keys[i]) >> log_entries) & 1) continue;
        found_values[kept] = found_values[i];
        found_keys[kept++] = found_keys[i];
      }
      n = kept;
    }
    return n;
  }

  // The smallest group minimum: that of every candidate.
  T least() const {
    typename S::V least = S::load(minima.data());
    for (size_t k = S::width; k < minima.size(); k += S::width)
      least = S::min(S::load(minima.data() + k), least);
    return S::least(least);
  }

  // The keep-th smallest group minimum (ties alike): a bound on the keep-th candidate.
  T bound(int keep) const {
    T limit = std::numeric_limits<T>::infinity();
    const int groups = int(minima.size());
    if (kth_smallest(minima.data(), groups, keep, &limit)) return limit;
    for (int i = 0; i < groups; ++i) {  // chosen by indexing, not by a branch
      const T choice[2] = {std::numeric_limits<T>::infinity(), minima[i]};
      limit = std::min(limit, choice[count_at_most(minima.data(), groups, minima[i]) >= keep]);
    }
    return limit;
  }

  // The smallest ``keep`` candidates of the runs, ascending by (value, key), NaN and the
  // codebooks their beams use left out, into chosen[0 ... keep); returns how many.
  int smallest(const T* base, int keep, const Beams<T>& beams_now, T limit) {
    const int n = collect(base, limit, beams_now);
    P::pack_all(found_values.data(), found_keys.data(), n, items.data());
    const int padded = (n + 7) / 8 * 8;  // with items above any other: whole registers
    std::fill(items.begin() + n, items.begin() + padded, ~typename P::type(0));
    for (int i = 0; i < n; ++i) {  // each item's rank (keys differ: no ties), by counting
      const int rank = count_below(items.data(), padded, items[i]);
      chosen[rank < keep ? rank : keep] = items[i];  // entry keep: any ranked keep or later
    }
    return std::min(n, keep);
  }

  int beam_of(uint32_t key) const { return int(key >> shift); }
  int32_t codeword_of(uint32_t key) const { return int32_t(key & ((1u << shift) - 1)); }

  const int stages, entries, most, total, log_entries, shift;
  const bool by_codebook;  // runs of one codebook (long codebooks), else whole rows
  bool whole = false;      // this step's runs are whole rows
  const int slots;         // R
  int slot = 0;            // the group slot of the next run
  Beams<T> beams[2];
  Repeats repeats;
  Beams<T> empty;                 // the empty tuple: zero cross sums and error
  std::vector<Run<T>> runs;       // (B * M,) this step's: count of them
  int count = 0;
  std::vector<T> minima;          // (G,)
  std::vector<T> run_minima;      // (B * M,) the minimum of each run
  int chunks = 0;                 // this step's chunk minima so far
  std::vector<T> chunk_minima;    // (chunks, width) of the runs longer than a chunk, less
                                  // their beams' errors
  struct Pending {
    int run, first;  // the chunk of runs[run] from codeword first
  };
  std::vector<Pending> pending;   // (chunks,) those collect computes again
  std::vector<T> found_values;    // (B * MK,) the candidates within the bound
  std::vector<uint32_t> found_keys;     // (B * MK,)
  std::vector<typename P::type> items;  // (B * MK,) the same, packed
  std::vector<typename P::type> chosen;  // (B + 1,)
};

// Calls visit(m) for each codebook m whose bit is not set in used.
template <typename Visit>
inline void each_open(uint64_t used, int stages, Visit visit) {
  uint64_t open = ~used & (stages == 64 ? ~uint64_t(0) : (uint64_t(1) << stages) - 1);
  for (; open; open &= open - 1) visit(__builtin_ctzll(open));
}

// out[k] = a[k] + b[k] for k < count.
template <typename T>
void add(const T* a, const T* b, int count, T* out) {
  using S = Simd<T>;
  int k = 0;
  for (; k + S::width <= count; k += S::width)
    S::store(out + k, S::add(S::load(a + k), S::load(b + k)));
  for (; k < count; ++k) out[k] = a[k] + b[k];
}

// Codes (M,) of one vector, given its base row (MK,).
template <typename T>
void search_one(Workspace<T>& w, const T* base, const T* cross, int beam_width,
                int64_t* codes) {
  using P = Packing<T>;
  const int stages = w.stages, entries = w.entries, total = w.total;

  // step 0: the beam_width nearest codewords (the runs of an empty beam 0, in row 0)
  Beams<T>* now = &w.beams[0];
  now->used[0] = 0;
  w.start();
  w.whole = !w.by_codebook;
  for (int m = 0; m < (w.by_codebook ? stages : 1); ++m) {
    const int first = w.by_codebook ? m * entries : 0;
    w.fill(0, first, w.by_codebook ? entries : total, base, w.empty);
  }
  const int keep = std::min(beam_width, total);
  T limit;  // of short rows, the keep-th smallest itself, else the groups' bound
  if (!kth_smallest(base, total, keep, &limit)) limit = w.bound(keep);
  now->count = w.smallest(base, keep, *now, limit);
  if (now->count == 0) {  // every distance NaN
    w.chosen[0] = P::pack(T(0), 0);
    now->count = 1;
  }
  for (int b = 0; b < now->count; ++b) {
    const int32_t c = w.codeword_of(uint32_t(w.chosen[b]));
    now->error[b] = P::value(w.chosen[b]);
    now->path[size_t(b) * stages] = c;
    now->used[b] = uint64_t(1) << (c / entries);
    now->partial[b] = cross + size_t(c) * total;
    now->middle[b] = nullptr;
    now->latest[b] = nullptr;
  }

  for (int step = 1; step < stages; ++step) {
    const bool last = step == stages - 1;
    w.start();
    // whole rows for short codebooks, and for codebooks of two registers while a beam
    // uses at most a quarter of its row and its cross sums are whole rows of the table
    // (three codewords or fewer; later they are summed over the open codebooks only):
    // fewer, longer runs
    w.whole = !w.by_codebook ||
              (4 * step <= stages && step <= 3 && entries == 2 * Simd<T>::width);
    if (!last)  // each set once, from the best beam that reaches it
      w.repeats.find(now->path.data(), now->count, step, stages);
    for (int b = 0; b < now->count; ++b) {  // every candidate: beam b extended by j
      if (w.whole) {
        w.fill(b, 0, total, base, *now);
        continue;
      }
      each_open(now->used[b], stages, [&](int m) {
        w.fill(b, m * entries, entries, base, *now);
      });
    }

    if (last) {  // the smallest; ties: the smaller codeword, then the earlier beam
      const int n = w.collect(base, w.least(), *now);
      int best_beam = -1, best_codeword = total;
      for (int i = 0; i < n; ++i) {
        const int32_t codeword = w.codeword_of(w.found_keys[i]);
        if (codeword < best_codeword) {
          best_beam = w.beam_of(w.found_keys[i]);
          best_codeword = codeword;
        }
      }
      if (best_beam < 0) {  // every candidate NaN: any open codebook of beam 0
        best_beam = 0;
        best_codeword = __builtin_ctzll(~now->used[0]) * entries;
      }
      const int32_t* parent = now->path.data() + size_t(best_beam) * stages;
      for (int i = 0; i < step; ++i) codes[parent[i] / entries] = parent[i] % entries;
      codes[best_codeword / entries] = best_codeword % entries;
      return;
    }

    Beams<T>& next = w.beams[now == &w.beams[0] ? 1 : 0];
    next.count = w.smallest(base, beam_width, *now, w.bound(beam_width));
    if (next.count == 0) {  // every candidate NaN: go on with beam 0
      w.chosen[0] = P::pack(std::numeric_limits<T>::infinity(),
                            uint32_t(__builtin_ctzll(~now->used[0]) * entries));
      next.count = 1;
    }
    w.repeats.clear(now->count);

    for (int b = 0; b < next.count; ++b) {
      const int parent = w.beam_of(uint32_t(w.chosen[b]));
      const int32_t c = w.codeword_of(uint32_t(w.chosen[b]));
      int32_t* to = next.path.data() + size_t(b) * stages;
      for (int i = 0; i < step; ++i) to[i] = now->path[size_t(parent) * stages + i];
      to[step] = c;
      next.error[b] = P::value(w.chosen[b]);
      next.used[b] = now->used[parent] | uint64_t(1) << (c / entries);
      // the new beam's cross sums: its parent's, the partial and middle ones summed where
      // it has both (by codebook: over the codebooks it has not used), and its codeword's
      // row
      next.latest[b] = cross + size_t(c) * total;
      const T* from = now->partial[parent];
      const T* row = now->middle[parent];
      next.middle[b] = now->latest[parent];
      if (!row) {  // the parent's first or second codeword
        next.partial[b] = from;
        continue;
      }
      T* out = next.sums.data() + size_t(b) * total;
      next.partial[b] = out;
      if (!w.by_codebook) {
        add(from, row, total, out);
        continue;
      }
      each_open(next.used[b], stages, [&](int m) {
        const int first = m * entries;
        add(from + first, row + first, entries, out + first);
      });
    }
    now = &next;
  }
  codes[0] = now->path[0];  // one codebook: the nearest codeword
}

// The most beams any step keeps: beam_width, or fewer when fewer sets of t codewords
// (C(M, t) K^t of them) exist before the last step.
int most_beams(int stages, int entries, int beam_width) {
  int64_t most = 0;
  double sets = 1.0;  // C(M, t) K^t, as a double: it may exceed any integer type
  for (int t = 1; t < std::max(stages, 2); ++t) {
    sets *= double(stages - t + 1) / t * entries;
    most = std::max<int64_t>(most, int64_t(std::min<double>(sets, beam_width)));
  }
  return int(most);
}

// This thread's workspace for searches of this size, kept from one call to the next: a
// new one would be fresh memory from the system, its pages faulting in on first write,
// on every call. (Each search leaves its Repeats rows clear.)
template <typename T>
Workspace<T>& workspace(int stages, int entries, int most) {
  thread_local std::unique_ptr<Workspace<T>> kept;
  if (!kept || kept->stages != stages || kept->entries != entries || kept->most != most)
    kept = std::make_unique<Workspace<T>>(stages, entries, most);
  return *kept;
}

template <typename T>
void search_rows(const T* base, const T* cross, int64_t rows, int stages, int entries,
                 int beam_width, int64_t* codes, int threads) {
  const int total = stages * entries;
  const int most = most_beams(stages, entries, beam_width);
  auto run = [=](int64_t first, int64_t last) {
    Workspace<T>& w = workspace<T>(stages, entries, most);
    for (int64_t r = first; r < last; ++r)
      search_one(w, base + r * total, cross, most, codes + r * stages);
  };
  if (threads <= 1 || rows < 2 * threads) {
    run(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t share = (rows + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t first = t * share;
    if (first < rows) pool.emplace_back(run, first, std::min(rows, first + share));
  }
  run(0, std::min(rows, share));
  for (auto& thread : pool) thread.join();
}

}  // namespace

extern "C" {

// base (rows, M*K) and cross (M*K, M*K), row-major float32; codes (rows, M) int64 out.
void avq_beam_search_f32(const float* base, const float* cross, int64_t rows, int stages,
                         int entries, int beam_width, int64_t* codes, int threads) {
  search_rows(base, cross, rows, stages, entries, beam_width, codes, threads);
}

void avq_beam_search_f64(const double* base, const double* cross, int64_t rows, int stages,
                         int entries, int beam_width, int64_t* codes, int threads) {
  search_rows(base, cross, rows, stages, entries, beam_width, codes, threads);
}

}  // extern "C"
