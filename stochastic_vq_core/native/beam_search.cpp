// AVQ's beam search, one vector at a time, with the candidates' errors from tables.
//
// The same search as ``beam_search_torch`` in additive_vq.py, with the same floating-point
// operations in the same order, so that both return the same codes (ties aside):
//
//   base[j]      = ||c_j||² - 2 <x, c_j>              (computed by the caller, (N, MK))
//   cross[i][j]  = <c_i, c_j>                           ((MK, MK); the blocks of one
//                                                        codebook are never read)
//   sums_b[j]    = Σ_{i in beam b, in the order chosen} cross[i][j]
//   candidate    = (base[j] + 2 sums_b[j]) + error_b    (error of beam b extended by j)
//
// A step keeps the ``beam_width`` smallest candidates over every beam and every codeword of
// a codebook the beam has not used, leaving out a candidate whose set of codewords a
// better beam also reaches; the last step keeps the smallest. The candidates are written
// a SIMD register at a time in segments (one beam, one codebook), the repeated sets as NaN,
// and each segment's minimum is kept. The beam_width-th smallest segment minimum bounds
// the beam_width-th smallest candidate from above (that many segments hold a candidate
// no larger), so only the segments whose minimum is within it are searched for the step's
// best, and only the candidates within it are sorted.
//
// Plain C++17 with a C interface, no torch headers: built on first use (a second or two)
// and called through ctypes by ``stochastic_vq_core.native``.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// Appends the lanes of v set in mask, and key + lane, to values and keys; returns how many.
template <typename T>
int append_lanes(const T* lanes, uint32_t mask, uint32_t key, T* values, uint32_t* keys) {
  int n = 0;
  for (; mask; mask &= mask - 1, ++n) {
    const int lane = __builtin_ctz(mask);
    values[n] = lanes[lane];
    keys[n] = key + uint32_t(lane);
  }
  return n;
}

// One value at a time: the fallback for any machine and for codebooks shorter than a
// SIMD register. The SIMD versions below have the same operations.
template <typename T>
struct Scalar {
  using V = T;
  static constexpr int width = 1;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V set(T v) { return v; }
  // b + 2 s: 2 s is exact, so this rounds once, as a fused multiply-add would
  static V twice_plus(V b, V s) { return b + (s + s); }
  static V add(V a, V b) { return a + b; }
  static V min(V v, V least) { return v < least ? v : least; }  // NaN v: least
  static uint32_t at_most(V v, T limit) { return v <= limit; }  // NaN: 0
  static T least(V v) { return v; }
  static int append(V v, uint32_t mask, uint32_t key, T* values, uint32_t* keys) {
    return append_lanes(&v, mask, key, values, keys);
  }
};

#if defined(__AVX512F__)
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
  static int append(V v, uint32_t mask, uint32_t key, float* values, uint32_t* keys) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    _mm512_mask_compressstoreu_ps(values, __mmask16(mask), v);
    _mm512_mask_compressstoreu_epi32(keys, __mmask16(mask),
                                     _mm512_add_epi32(_mm512_set1_epi32(int(key)), lane));
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
  static int append(V v, uint32_t mask, uint32_t key, double* values, uint32_t* keys) {
    double lanes[8];
    _mm512_storeu_pd(lanes, v);
    return append_lanes(lanes, mask, key, values, keys);
  }
};
#elif defined(__AVX2__)
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
  static int append(V v, uint32_t mask, uint32_t key, float* values, uint32_t* keys) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    return append_lanes(lanes, mask, key, values, keys);
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
  static int append(V v, uint32_t mask, uint32_t key, double* values, uint32_t* keys) {
    double lanes[4];
    _mm256_storeu_pd(lanes, v);
    return append_lanes(lanes, mask, key, values, keys);
  }
};
#else
using Floats = Scalar<float>;
using Doubles = Scalar<double>;
#endif

template <typename T>
using Simd = std::conditional_t<std::is_same<T, float>::value, Floats, Doubles>;

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
      : path(size_t(most) * stages), error(most), used(most), sums(size_t(most) * total) {}

  int count = 0;
  std::vector<int32_t> path;   // (B, M) codewords of each beam, in the order chosen
  std::vector<T> error;        // (B,) error of each beam, less ||x||²
  std::vector<uint64_t> used;  // (B,) bit m: the beam holds a codeword of codebook m
  std::vector<T> sums;         // (B, MK) cross sums of the beams (from step 2 on)
};

// Which extensions repeat a better beam's set. Beam b extended by j holds the same set
// as a better beam a (a < b) extended by some j' exactly when a holds all but one of
// b's codewords and j (then a's set is b's with that one swapped for j). Bit masks of
// the beams that hold each codeword find those a.
class Repeats {
 public:
  Repeats(int total, int most)
      : words_((most + 63) / 64), holders_(size_t(total) * words_), all_but_(words_),
        suspects_(words_) {}

  // Calls repeat(b, j) for each beam b and codeword j such that b + j repeats a better
  // beam's extension (j may lie in a codebook b uses; such an extension does not exist).
  template <typename Repeat>
  void find(const int32_t* path, int count, int size, int stages, Repeat repeat) {
    if (size == 1) {  // single codewords: every better beam's codeword
      for (int b = 1; b < count; ++b)
        for (int a = 0; a < b; ++a) repeat(b, path[size_t(a) * stages]);
      return;
    }
    for (int b = 0; b < count; ++b)
      for (int i = 0; i < size; ++i)
        holders(path[size_t(b) * stages + i])[b / 64] |= uint64_t(1) << (b % 64);
    for (int b = 1; b < count; ++b) {
      const int32_t* mine = path + size_t(b) * stages;
      std::fill(suspects_.begin(), suspects_.end(), 0);
      for (int out = 0; out < size; ++out) {  // beams holding all of b's codewords but one
        std::fill(all_but_.begin(), all_but_.end(), ~uint64_t(0));
        for (int i = 0; i < size; ++i)
          if (i != out)
            for (int w = 0; w < words_; ++w) all_but_[w] &= holders(mine[i])[w];
        for (int w = 0; w < words_; ++w) suspects_[w] |= all_but_[w];
      }
      for (int w = 0; w <= (b - 1) / 64; ++w) {  // only better beams
        uint64_t better = suspects_[w];
        if (w == b / 64) better &= (uint64_t(1) << (b % 64)) - 1;
        for (; better; better &= better - 1) {
          const int a = w * 64 + __builtin_ctzll(better);
          const int32_t* theirs = path + size_t(a) * stages;
          for (int i = 0; i < size; ++i)  // a's codeword that b lacks
            if (!(holders(theirs[i])[b / 64] >> (b % 64) & 1)) repeat(b, theirs[i]);
        }
      }
    }
    for (int b = 0; b < count; ++b)
      for (int i = 0; i < size; ++i)
        std::fill_n(holders(path[size_t(b) * stages + i]), words_, 0);
  }

 private:
  uint64_t* holders(int32_t codeword) { return holders_.data() + size_t(codeword) * words_; }

  int words_;
  std::vector<uint64_t> holders_;   // (MK, W) bit b: beam b holds the codeword
  std::vector<uint64_t> all_but_;   // (W,)
  std::vector<uint64_t> suspects_;  // (W,)
};

// A run of candidates in a step's buffer: buffer[first + k], k < length, is beam ``beam``
// extended by codeword ``codeword + k``.
struct Run {
  int first, length, beam, codeword;
};

// The per-thread state of the search, and its selection of a step's best candidates.
//
// A step's candidates lie in a buffer of B rows of MK, beam b extended by codeword j at
// b * MK + j, in runs: whole rows (short codebooks; the codebooks a beam uses then hold
// +inf, from the cross table) or one run per codebook a beam has not used. The runs are
// folded into G group minima (group = position mod G; G a power of two, a multiple of the
// SIMD width and at least 2 * beam_width). The keep-th smallest group minimum bounds the
// keep-th smallest candidate from above, since that many groups each hold a candidate no
// larger; only the candidates within it, usually not many more than keep, are sorted.
// A candidate is known by its key, beam << shift | codeword, which orders as its position.
template <typename T>
struct Workspace {
  using P = Packing<T>;
  using S = Simd<T>;

  Workspace(int stages, int entries, int most)
      : stages(stages),
        entries(entries),
        total(stages * entries),
        log_entries(__builtin_ctz(unsigned(entries))),
        shift(32 - __builtin_clz(unsigned(total))),
        by_codebook(entries >= 4 * S::width),
        groups(power_of_two(std::max(S::width, 2 * most))),
        beams{Beams<T>(stages, total, most), Beams<T>(stages, total, most)},
        repeats(total, most),
        values(size_t(most) * total),
        minima(groups),
        run_minima(size_t(most) * stages),
        found_values(size_t(most) * total),
        found_keys(size_t(most) * total),
        items(size_t(most) * total) {}

  static int power_of_two(int n) {
    int p = 1;
    while (p < n) p *= 2;
    return p;
  }

  // The runs of a step's candidates (and, by codebook, each run's minimum) into minima.
  void fold() {
    std::fill(minima.begin(), minima.end(), std::numeric_limits<T>::infinity());
    for (size_t r = 0; r < runs.size(); ++r) {
      const T* v = values_at + runs[r].first;
      const int length = runs[r].length;
      int g = runs[r].first & (groups - 1), k = 0;
      typename S::V least = S::set(std::numeric_limits<T>::infinity());
      if (g % S::width == 0) {
        for (; k + S::width <= length; k += S::width) {
          const typename S::V x = S::load(v + k);
          S::store(minima.data() + g, S::min(x, S::load(minima.data() + g)));
          least = S::min(x, least);
          g = (g + S::width) & (groups - 1);
        }
      }
      T rest = std::numeric_limits<T>::infinity();
      for (; k < length; ++k, g = (g + 1) & (groups - 1)) {
        minima[g] = v[k] < minima[g] ? v[k] : minima[g];
        rest = v[k] < rest ? v[k] : rest;
      }
      if (by_codebook) run_minima[r] = std::min(S::least(least), rest);
    }
  }

  // Appends each candidate <= limit to found (value and key), in order, leaving out those
  // of the codebooks their beams use; by codebook, runs whose minimum exceeds the limit are
  // skipped. Returns how many.
  int collect(T limit, const Beams<T>& beams_now) {
    int n = 0;
    for (size_t r = 0; r < runs.size(); ++r) {
      const Run& run = runs[r];
      if (by_codebook && !(run_minima[r] <= limit)) continue;
      const T* v = values_at + run.first;
      const uint32_t key = uint32_t(run.beam) << shift | uint32_t(run.codeword);
      int k = 0;
      if (run.first % S::width == 0) {
        for (; k + S::width <= run.length; k += S::width) {
          const typename S::V x = S::load(v + k);
          const uint32_t mask = S::at_most(x, limit);
          if (mask) n += S::append(x, mask, key + k, found_values.data() + n, found_keys.data() + n);
        }
      }
      for (; k < run.length; ++k)
        if (v[k] <= limit) {
          found_values[n] = v[k];
          found_keys[n++] = key + k;
        }
    }
    if (!by_codebook && !(limit < std::numeric_limits<T>::infinity())) {  // +inf: used ones too
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

  // The keep-th smallest group minimum (ties alike): a bound on the keep-th candidate.
  T bound(int keep) const {
    T limit = std::numeric_limits<T>::infinity();
    for (int i = 0; i < groups; ++i) {
      const bool enough = count_at_most(minima.data(), groups, minima[i]) >= keep;
      limit = enough & (minima[i] < limit) ? minima[i] : limit;
    }
    return limit;
  }

  // The smallest ``keep`` candidates of the runs, ascending by (value, key), NaN and the
  // codebooks their beams use left out, into chosen; returns how many.
  int smallest(int keep, const Beams<T>& beams_now) {
    fold();
    const int n = collect(bound(keep), beams_now);
    for (int i = 0; i < n; ++i) items[i] = P::pack(found_values[i], found_keys[i]);
    chosen.resize(keep + 1);  // the last entry takes every item ranked keep or later
    for (int i = 0; i < n; ++i) {  // each item's rank (keys differ: no ties), by counting
      const int rank = count_below(items.data(), n, items[i]);
      chosen[rank < keep ? rank : keep] = items[i];
    }
    chosen.resize(std::min(n, keep));
    return int(chosen.size());
  }

  int beam_of(uint32_t key) const { return int(key >> shift); }
  int32_t codeword_of(uint32_t key) const { return int32_t(key & ((1u << shift) - 1)); }

  const int stages, entries, total, log_entries, shift;
  const bool by_codebook;  // runs of one codebook (long codebooks), else whole rows
  const int groups;
  Beams<T> beams[2];
  Repeats repeats;
  std::vector<T> values;         // (B, MK) a step's candidates
  const T* values_at = nullptr;  // the buffer the runs index (values, or the base row)
  std::vector<Run> runs;
  std::vector<T> minima;      // (G,)
  std::vector<T> run_minima;  // (runs,)
  std::vector<T> found_values;         // (B * MK,) the candidates within the bound
  std::vector<uint32_t> found_keys;     // (B * MK,)
  std::vector<typename P::type> items;  // (B * MK,) the same, packed
  std::vector<typename P::type> chosen;
};

// Calls visit(m) for each codebook m whose bit is not set in used.
template <typename Visit>
inline void each_open(uint64_t used, int stages, Visit visit) {
  uint64_t open = ~used & (stages == 64 ? ~uint64_t(0) : (uint64_t(1) << stages) - 1);
  for (; open; open &= open - 1) visit(__builtin_ctzll(open));
}

// out[k] = (base[k] + 2 sums[k]) + error for k < count: a candidate's error less ||x||².
template <typename T>
void evaluate(const T* base, const T* sums, T error, int count, T* out) {
  using S = Simd<T>;
  const typename S::V e = S::set(error);
  int k = 0;
  for (; k + S::width <= count; k += S::width)
    S::store(out + k, S::add(S::twice_plus(S::load(base + k), S::load(sums + k)), e));
  for (; k < count; ++k) out[k] = (base[k] + (sums[k] + sums[k])) + error;
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

  // step 0: the beam_width nearest codewords; "beam 0" of no codeword is every row's parent
  Beams<T>* now = &w.beams[0];
  w.values_at = base;
  w.runs.clear();
  for (int m = 0; m < (w.by_codebook ? stages : 1); ++m) {
    const int first = w.by_codebook ? m * entries : 0;
    w.runs.push_back(Run{first, w.by_codebook ? entries : total, 0, first});
  }
  now->used[0] = 0;
  if (w.smallest(std::min(beam_width, total), *now) == 0)
    w.chosen.assign(1, P::pack(T(0), 0));  // every distance NaN
  now->count = int(w.chosen.size());
  for (int b = 0; b < now->count; ++b) {
    const int32_t c = w.codeword_of(uint32_t(w.chosen[b]));
    now->error[b] = P::value(w.chosen[b]);
    now->path[size_t(b) * stages] = c;
    now->used[b] = uint64_t(1) << (c / entries);
  }

  w.values_at = w.values.data();
  for (int step = 1; step < stages; ++step) {
    // the cross sums of beam b: the cross table's row while beams hold one codeword
    auto sums_of = [&](int b) -> const T* {
      return step == 1 ? cross + size_t(now->path[size_t(b) * stages]) * total
                       : now->sums.data() + size_t(b) * total;
    };
    // every candidate: beam b extended by codeword j at b * MK + j
    w.runs.clear();
    for (int b = 0; b < now->count; ++b) {
      T* out = w.values.data() + size_t(b) * total;
      if (!w.by_codebook) {
        evaluate(base, sums_of(b), now->error[b], total, out);
        w.runs.push_back(Run{b * total, total, b, 0});
        continue;
      }
      each_open(now->used[b], stages, [&](int m) {
        const int first = m * entries;
        evaluate(base + first, sums_of(b) + first, now->error[b], entries, out + first);
        w.runs.push_back(Run{b * total + first, entries, b, first});
      });
    }

    if (step == stages - 1) {  // the smallest; ties: the smaller codeword, then beam
      w.fold();
      const int n = w.collect(*std::min_element(w.minima.begin(), w.minima.end()), *now);
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

    // each set once, from the best beam that reaches it
    w.repeats.find(now->path.data(), now->count, step, stages, [&](int b, int32_t j) {
      w.values[size_t(b) * total + j] = std::numeric_limits<T>::quiet_NaN();
    });
    if (w.smallest(beam_width, *now) == 0)  // every candidate NaN: go on with beam 0
      w.chosen.assign(1, P::pack(std::numeric_limits<T>::infinity(),
                                 uint32_t(__builtin_ctzll(~now->used[0]) * entries)));

    Beams<T>& next = w.beams[now == &w.beams[0] ? 1 : 0];
    next.count = int(w.chosen.size());
    for (int b = 0; b < next.count; ++b) {
      const int parent = w.beam_of(uint32_t(w.chosen[b]));
      const int32_t c = w.codeword_of(uint32_t(w.chosen[b]));
      int32_t* to = next.path.data() + size_t(b) * stages;
      std::copy_n(now->path.data() + size_t(parent) * stages, step, to);
      to[step] = c;
      next.error[b] = P::value(w.chosen[b]);
      next.used[b] = now->used[parent] | uint64_t(1) << (c / entries);
      // the new beam's cross sums (by codebook: over the codebooks it has not used)
      const T* from = sums_of(parent);
      const T* row = cross + size_t(c) * total;
      T* out = next.sums.data() + size_t(b) * total;
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

template <typename T>
void search_rows(const T* base, const T* cross, int64_t rows, int stages, int entries,
                 int beam_width, int64_t* codes, int threads) {
  const int total = stages * entries;
  const int most = most_beams(stages, entries, beam_width);
  auto run = [=](int64_t first, int64_t last) {
    Workspace<T> w(stages, entries, most);
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
