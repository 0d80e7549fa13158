// A batch of activation maps as the cores see it: a raw pointer, an element
// type and element strides.  No framework types cross this boundary, so the
// native module works with any torch (or NumPy) version.
#pragma once

#include <cstdint>

#include "ocnna_math.h"

namespace ocnna {

struct MapBatch {
  const void* data;  // element (0, 0, 0, 0)
  int dtype;         // DType
  int64_t n, c, h, w;
  int64_t sn, sc, sh, sw;  // strides in elements, any sign

  OCNNA_HD int64_t offset(int64_t i, int64_t ch, int64_t y, int64_t x) const {
    return i * sn + ch * sc + y * sh + x * sw;
  }
};

// Element loaders specialised per type, so the hot loops carry no switch.
struct Half16 { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

OCNNA_HD double to_double(float v) { return double(v); }
OCNNA_HD double to_double(double v) { return v; }
OCNNA_HD double to_double(Half16 v) { return double(half_to_float(v.bits)); }
OCNNA_HD double to_double(BFloat16 v) { return double(bf16_to_float(v.bits)); }

// The narrowest floating type that holds every value of element type T
// exactly: float for float32/float16/bfloat16 input, double for float64.
template <typename T>
struct ExactFloat {
  using type = float;
};
template <>
struct ExactFloat<double> {
  using type = double;
};

}  // namespace ocnna
