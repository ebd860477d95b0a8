// 2-D convolutions for the CPU backend through oneDNN, as XLA FFI custom calls.
//
// Layouts are the model's own: activations NHWC, kernels HWIO. Activations are handed to oneDNN as they
// are (it has channels-last kernels); kernels and kernel gradients go through a reorder to the blocked
// layout oneDNN picks, which costs little since a kernel is small next to a batch of activations.
//
// Three handlers:
//   alexnet_onednn_conv_fwd(x, w) -> y
//   alexnet_onednn_conv_bwd(x, w, dy) -> (dx, dw)   input and kernel gradients in one call, one after
//                                                   the other, so two OpenMP teams never share the cores.
//   alexnet_onednn_conv_bwd_weights(x, dy) -> dw    the kernel gradient alone, where x needs none.
// Attributes: `strides` (2), `padding` (4: top, bottom, left, right) and `bf16_compute`.
//
// Element types. Buffers are all float32 or all bfloat16. The arithmetic multiplies in the buffers' type,
// or, with `bf16_compute` on float32 buffers, in bfloat16: inputs, kernels and incoming gradients are
// rounded to bfloat16 inside the call, and results and gradients come out in float32. oneDNN accumulates
// in float32 in every case.
//
// Primitives are built on first use, once per shape and per kind (forward, input gradient, kernel gradient),
// so an inference-only program never builds backward ones, and cached. Every call brings its own scratchpad
// and stream, so concurrent calls (several simulated devices in one process) never share mutable state.
//
// No exception leaves a handler: one escaping into XLA would end the whole process (std::terminate), so
// each is turned into an ffi::Error, which JAX raises as a Python exception.
//
// For tests only, two exported functions besides the handlers: alexnet_onednn_primitive_counts (how many
// primitives of each kind were built) and alexnet_onednn_set_test_failure (makes every later handler call
// throw, to check the previous paragraph). onednn_build.py wraps both.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dtype = dnnl::memory::data_type;

namespace {

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct ConvShape {
  int64_t n, h, w, c;      // input, NHWC
  int64_t kh, kw, o;       // kernel, HWIO (I == c)
  int64_t oh, ow;          // output spatial size
  int64_t sh, sw;          // strides
  int64_t pt, pb, pl, pr;  // padding
  dtype io;                // the buffers' element type
  dtype compute;           // what the products are taken in

  auto Key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, static_cast<int>(io),
                           static_cast<int>(compute));
  }
  dnnl::memory::desc Src(dtype t) const { return {{n, c, h, w}, t, tag::nhwc}; }
  dnnl::memory::desc Dst(dtype t) const { return {{n, o, oh, ow}, t, tag::nhwc}; }
  dnnl::memory::desc Weights(dtype t, tag layout) const { return {{o, c, kh, kw}, t, layout}; }
  dims Strides() const { return {sh, sw}; }
  dims PadLow() const { return {pt, pl}; }
  dims PadHigh() const { return {pb, pr}; }
};

// How many primitives of each kind were built in this process (alexnet_onednn_primitive_counts).
enum PrimitiveKind { kForward, kInputGradient, kKernelGradient, kKernelGradientMatmul, kPrimitiveKinds };
std::atomic<int64_t> primitives_built[kPrimitiveKinds];

// One primitive with the descriptor it was made from.
template <typename Primitive, PrimitiveKind kind>
struct Built {
  typename Primitive::primitive_desc pd;
  Primitive primitive;

  explicit Built(typename Primitive::primitive_desc desc) : pd(std::move(desc)), primitive(pd) {
    primitives_built[kind].fetch_add(1, std::memory_order_relaxed);
  }
};

// A value built by the first call that asks for it. Only calls that want this very value wait for that
// build (each Lazy has its own lock); later calls read it without locking. An exception from the build
// leaves it unbuilt, and the next call tries again.
template <typename T>
class Lazy {
 public:
  template <typename Make>
  const T& Get(Make make) {
    if (const T* ready = ready_.load(std::memory_order_acquire)) return *ready;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!value_) {
      value_ = std::make_unique<T>(make());
      ready_.store(value_.get(), std::memory_order_release);
    }
    return *value_;
  }

 private:
  std::mutex mutex_;
  std::unique_ptr<T> value_;
  std::atomic<const T*> ready_{nullptr};
};

using ForwardPrimitive = Built<dnnl::convolution_forward, kForward>;
using InputGradientPrimitive = Built<dnnl::convolution_backward_data, kInputGradient>;
using KernelGradientPrimitive = Built<dnnl::convolution_backward_weights, kKernelGradient>;
using MatmulPrimitive = Built<dnnl::matmul, kKernelGradientMatmul>;

// Everything one convolution shape needs, each kind built on its first use. Operands that are read come in
// the compute type; results are written in the buffers' type.
class ConvPrimitives {
 public:
  explicit ConvPrimitives(const ConvShape& s) : s_(s) {
    attr_.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  }

  const ForwardPrimitive& Forward() {
    return forward_.Get([&] {
      return ForwardPrimitive(dnnl::convolution_forward::primitive_desc(
          CpuEngine(), dnnl::prop_kind::forward_training, kDirect, s_.Src(s_.compute), AnyWeights(),
          s_.Dst(s_.io), s_.Strides(), s_.PadLow(), s_.PadHigh(), attr_));
    });
  }

  const InputGradientPrimitive& InputGradient() {
    return input_gradient_.Get([&] {
      return InputGradientPrimitive(dnnl::convolution_backward_data::primitive_desc(
          CpuEngine(), kDirect, s_.Src(s_.io), AnyWeights(), s_.Dst(s_.compute), s_.Strides(), s_.PadLow(),
          s_.PadHigh(), Hint(), attr_));
    });
  }

  const KernelGradientPrimitive& KernelGradient() {
    return kernel_gradient_.Get([&] {
      return KernelGradientPrimitive(dnnl::convolution_backward_weights::primitive_desc(
          CpuEngine(), kDirect, s_.Src(s_.compute), s_.Weights(s_.io, tag::any), s_.Dst(s_.compute),
          s_.Strides(), s_.PadLow(), s_.PadHigh(), Hint(), attr_));
    });
  }

  // The kernel gradient as one matrix product, (KH*KW*C, P) x (P, O) over the P = N*OH*OW output
  // positions, of the unfolded input (im2col) and the output gradient. See UseMatmulForKernelGradient.
  const MatmulPrimitive& KernelGradientMatmul() {
    return matmul_.Get([&] {
      const int64_t k = s_.kh * s_.kw * s_.c, positions = s_.n * s_.oh * s_.ow;
      return MatmulPrimitive(dnnl::matmul::primitive_desc(
          CpuEngine(), dnnl::memory::desc({k, positions}, s_.compute, dims{1, k}),  // unfolded, transposed
          dnnl::memory::desc({positions, s_.o}, s_.compute, dims{s_.o, 1}),  // NHWC's bytes as (P, O)
          dnnl::memory::desc({k, s_.o}, s_.io, dims{s_.o, 1}), attr_));  // HWIO, row-major (kh, kw, c) x o
    });
  }

 private:
  static constexpr dnnl::algorithm kDirect = dnnl::algorithm::convolution_direct;

  // `any` for kernels: oneDNN picks its fastest blocked layout.
  dnnl::memory::desc AnyWeights() const { return s_.Weights(s_.compute, tag::any); }

  // The backward passes' hint: the forward pass as the backward one sees it (gradients in `compute`).
  const dnnl::convolution_forward::primitive_desc& Hint() {
    return hint_.Get([&] {
      return dnnl::convolution_forward::primitive_desc(
          CpuEngine(), dnnl::prop_kind::forward_training, kDirect, s_.Src(s_.compute), AnyWeights(),
          s_.Dst(s_.compute), s_.Strides(), s_.PadLow(), s_.PadHigh());
    });
  }

  const ConvShape s_;
  dnnl::primitive_attr attr_;
  Lazy<dnnl::convolution_forward::primitive_desc> hint_;
  Lazy<ForwardPrimitive> forward_;
  Lazy<InputGradientPrimitive> input_gradient_;
  Lazy<KernelGradientPrimitive> kernel_gradient_;
  Lazy<MatmulPrimitive> matmul_;
};

// The shape's entry, created empty (nothing built) where new. The lock guards only the map; the
// primitives are built later, outside it, under their own Lazy's lock.
ConvPrimitives& PrimitivesFor(const ConvShape& shape) {
  static std::mutex mutex;
  static std::map<decltype(shape.Key()), std::unique_ptr<ConvPrimitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[shape.Key()];
  if (!entry) entry = std::make_unique<ConvPrimitives>(shape);
  return *entry;
}

ffi::Error Invalid(const char* message) {
  return ffi::Error::InvalidArgument(std::string("onednn conv: ") + message);
}

// `w` and `y` stand for the kernel and the output, or for their gradients: only shapes and types are read.
ffi::ErrorOr<ConvShape> ShapeOf(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, const ffi::AnyBuffer& y,
                                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                                bool bf16_compute) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || strides.size() != 2 || padding.size() != 4) {
    return ffi::Unexpected(Invalid("expected an NHWC input, an HWIO kernel, 2 strides and 4 pads"));
  }
  if (x.element_type() != w.element_type() || x.element_type() != y.element_type()) {
    return ffi::Unexpected(Invalid("input, kernel and output must share one dtype"));
  }
  ConvShape s;
  switch (x.element_type()) {
    case ffi::DataType::F32: s.io = dtype::f32; break;
    case ffi::DataType::BF16: s.io = dtype::bf16; break;
    default: return ffi::Unexpected(Invalid("only float32 and bfloat16 are supported"));
  }
  s.compute = bf16_compute ? dtype::bf16 : s.io;
  s.n = xd[0]; s.h = xd[1]; s.w = xd[2]; s.c = xd[3];
  s.kh = wd[0]; s.kw = wd[1]; s.o = wd[3];
  s.oh = yd[1]; s.ow = yd[2];
  s.sh = strides[0]; s.sw = strides[1];
  s.pt = padding[0]; s.pb = padding[1]; s.pl = padding[2]; s.pr = padding[3];
  if (wd[2] != s.c || yd[0] != s.n || yd[3] != s.o) {
    return ffi::Unexpected(Invalid("input, kernel and output shapes disagree"));
  }
  return s;
}

dnnl::memory Scratchpad(const dnnl::memory::desc& desc) { return dnnl::memory(desc, CpuEngine()); }

// `user` memory as a primitive wants it: the same buffer when layout and type agree, else a reorder.
dnnl::memory AsWanted(dnnl::memory user, const dnnl::memory::desc& wanted, dnnl::stream& stream) {
  if (user.get_desc() == wanted) return user;
  dnnl::memory converted(wanted, CpuEngine());
  dnnl::reorder(user, converted).execute(stream, user, converted);
  return converted;
}

// oneDNN 3.2's bfloat16 kernel-gradient convolution (brgconv_bwd_w on AMX) is slow on small feature maps:
// on the mnist variant's 6x6 maps (conv3-5, batch 128, a 2-core Xeon with AMX-BF16) it takes 33-35 ms per
// layer, where an unfold (im2col) plus one AMX matrix product takes 6-13 ms. On 13x13 maps the two are
// even or the convolution wins (conv2 here; conv3-5 of the `original` variant), in float32 the
// convolution always wins, and with few input channels the unfold copies tiny rows. Measured with
// experiments/layer_profile.py; docs/performance.md has the figures.
bool UseMatmulForKernelGradient(const ConvShape& s) {
  return s.compute == dtype::bf16 && s.c >= 16 && s.oh * s.ow <= 64;
}

// The input unfolded into rows of KH*KW*C, one per output position (zeros where the window hangs over
// the padding), in the compute type, written into `cols`: the matrix product's source, (KH*KW*C, P) with
// strides (1, KH*KW*C), whose bytes are those rows one after the other.
void Unfold(const ConvShape& s, const dnnl::memory& src, dnnl::memory& cols) {
  const int64_t k = s.kh * s.kw * s.c;
  const size_t item = dnnl::memory::data_type_size(s.compute), row_bytes = s.c * item;
  if (cols.get_desc().get_size() != static_cast<size_t>(s.n * s.oh * s.ow * k) * item) {
    throw std::logic_error("the unfolded input's buffer has the wrong size");
  }
  const char* in = static_cast<const char*>(src.get_data_handle());
  char* out = static_cast<char*>(cols.get_data_handle());
#pragma omp parallel for collapse(2)
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      for (int64_t ox = 0; ox < s.ow; ++ox) {
        char* row = out + ((n * s.oh + oy) * s.ow + ox) * k * item;
        for (int64_t ky = 0; ky < s.kh; ++ky) {
          const int64_t iy = oy * s.sh - s.pt + ky;
          for (int64_t kx = 0; kx < s.kw; ++kx, row += row_bytes) {
            const int64_t ix = ox * s.sw - s.pl + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) {
              std::memset(row, 0, row_bytes);
            } else {
              std::memcpy(row, in + ((n * s.h + iy) * s.w + ix) * row_bytes, row_bytes);
            }
          }
        }
      }
    }
  }
}

// The bytes of `memory` under the descriptor a primitive wants, where the two describe the same dense
// bytes with other dimensions (an NHWC tensor as an (N*H*W, C) matrix): no copy.
dnnl::memory Viewed(const dnnl::memory& memory, const dnnl::memory::desc& wanted) {
  const dnnl::memory::desc has = memory.get_desc();
  if (has.get_data_type() != wanted.get_data_type() || has.get_size() != wanted.get_size()) {
    throw std::logic_error("a buffer does not fit the descriptor the primitive wants");
  }
  return dnnl::memory(wanted, CpuEngine(), memory.get_data_handle());
}

struct Call {
  const ConvShape& s;
  ConvPrimitives& p;
  dnnl::stream stream{CpuEngine()};

  dnnl::memory User(const dnnl::memory::desc& desc, void* data) {
    return dnnl::memory(desc, CpuEngine(), data);
  }
  // Operands as the primitive's descriptor wants them (for a convolution: the compute type, channels-last).
  dnnl::memory Src(void* x, const dnnl::memory::desc& wanted) {
    return AsWanted(User(s.Src(s.io), x), wanted, stream);
  }
  dnnl::memory DiffDst(void* dy) { return AsWanted(User(s.Dst(s.io), dy), s.Dst(s.compute), stream); }
  dnnl::memory Weights(void* w, const dnnl::memory::desc& wanted) {
    return AsWanted(User(s.Weights(s.io, tag::hwio), w), wanted, stream);
  }

  void Forward(void* x, void* w, void* y) {
    const auto& f = p.Forward();
    f.primitive.execute(stream, {{DNNL_ARG_SRC, Src(x, f.pd.src_desc())},
                                 {DNNL_ARG_WEIGHTS, Weights(w, f.pd.weights_desc())},
                                 {DNNL_ARG_DST, User(s.Dst(s.io), y)},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(f.pd.scratchpad_desc())}});
  }

  void InputGradient(const dnnl::memory& diff_dst, void* w, void* dx) {
    const auto& g = p.InputGradient();
    g.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, AsWanted(diff_dst, g.pd.diff_dst_desc(), stream)},
                                 {DNNL_ARG_WEIGHTS, Weights(w, g.pd.weights_desc())},
                                 {DNNL_ARG_DIFF_SRC, User(s.Src(s.io), dx)},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(g.pd.scratchpad_desc())}});
  }

  void KernelGradient(void* x, const dnnl::memory& diff_dst, void* dw) {
    if (UseMatmulForKernelGradient(s)) {
      const auto& m = p.KernelGradientMatmul();
      dnnl::memory cols(m.pd.src_desc(), CpuEngine());
      Unfold(s, Src(x, s.Src(s.compute)), cols);
      m.primitive.execute(stream, {{DNNL_ARG_SRC, cols},
                                   {DNNL_ARG_WEIGHTS, Viewed(diff_dst, m.pd.weights_desc())},
                                   {DNNL_ARG_DST, User(m.pd.dst_desc(), dw)},
                                   {DNNL_ARG_SCRATCHPAD, Scratchpad(m.pd.scratchpad_desc())}});
      return;
    }
    const auto& g = p.KernelGradient();
    dnnl::memory user = User(s.Weights(s.io, tag::hwio), dw);
    const auto& wanted = g.pd.diff_weights_desc();
    dnnl::memory diff_weights = wanted == user.get_desc() ? user : dnnl::memory(wanted, CpuEngine());
    g.primitive.execute(stream, {{DNNL_ARG_SRC, Src(x, g.pd.src_desc())},
                                 {DNNL_ARG_DIFF_DST, AsWanted(diff_dst, g.pd.diff_dst_desc(), stream)},
                                 {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(g.pd.scratchpad_desc())}});
    if (diff_weights != user) dnnl::reorder(diff_weights, user).execute(stream, diff_weights, user);
  }
};

// Test hook (alexnet_onednn_set_test_failure): what every handler call throws first, 0 for nothing.
enum TestFailure { kNoTestFailure, kThrowBadAlloc, kThrowRuntimeError, kThrowNonStd };
std::atomic<int> test_failure{kNoTestFailure};

struct NotAStdException {};  // what kThrowNonStd throws: derives from nothing

void MaybeThrowForTest() {
  switch (test_failure.load(std::memory_order_relaxed)) {
    case kThrowBadAlloc: throw std::bad_alloc();
    case kThrowRuntimeError: throw std::runtime_error("test failure (alexnet_onednn_set_test_failure)");
    case kThrowNonStd: throw NotAStdException();
    default: return;
  }
}

// An error naming the call and the cause. Building its message may itself fail when memory ran out: then
// a literal short enough to need no allocation (std::string's small-string buffer) stands in.
ffi::Error Failure(ffi::ErrorCode code, const char* what, const char* cause) noexcept {
  try {
    return ffi::Error(code, std::string("onednn conv ") + what + ": " + cause);
  } catch (...) {
    return ffi::Error(code, "out of memory");
  }
}

// Runs one handler: reads the shape (`shape_of`), then `body`. Every exception stops here, the shape's
// checks included: one escaping an FFI handler would end the process.
template <typename ShapeFn, typename Body>
ffi::Error Run(const char* what, ShapeFn shape_of, Body body) noexcept {
  try {
    MaybeThrowForTest();
    const ffi::ErrorOr<ConvShape> shape = shape_of();
    if (shape.has_error()) return shape.error();
    Call call{shape.value(), PrimitivesFor(shape.value())};
    body(call);
    call.stream.wait();
  } catch (const dnnl::error& e) {
    return Failure(ffi::ErrorCode::kInternal, what, e.what());
  } catch (const std::bad_alloc&) {
    return Failure(ffi::ErrorCode::kResourceExhausted, what, "out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    return Failure(ffi::ErrorCode::kInternal, what, e.what());
  } catch (...) {
    return Failure(ffi::ErrorCode::kInternal, what, "an exception that is not a std::exception");
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       bool bf16_compute) {
  const auto shape = [&] { return ShapeOf(x, w, *y, strides, padding, bf16_compute); };
  return Run("forward", shape, [&](Call& call) {
    call.Forward(x.untyped_data(), w.untyped_data(), y->untyped_data());
  });
}

ffi::Error ConvBackward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer dy,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                        bool bf16_compute) {
  const auto shape = [&] { return ShapeOf(x, w, dy, strides, padding, bf16_compute); };
  return Run("backward", shape, [&](Call& call) {
    dnnl::memory diff_dst = call.DiffDst(dy.untyped_data());
    call.InputGradient(diff_dst, w.untyped_data(), dx->untyped_data());
    call.KernelGradient(x.untyped_data(), diff_dst, dw->untyped_data());
  });
}

ffi::Error ConvKernelGradient(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                              bool bf16_compute) {
  const auto shape = [&] { return ShapeOf(x, *dw, dy, strides, padding, bf16_compute); };
  return Run("kernel gradient", shape, [&](Call& call) {
    dnnl::memory diff_dst = call.DiffDst(dy.untyped_data());
    call.KernelGradient(x.untyped_data(), diff_dst, dw->untyped_data());
  });
}

}  // namespace

#define ALEXNET_CONV_ATTRIBUTES                      \
  .Attr<ffi::Span<const int64_t>>("strides")         \
      .Attr<ffi::Span<const int64_t>>("padding")     \
      .Attr<bool>("bf16_compute")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetOnednnConvFwd, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() ALEXNET_CONV_ATTRIBUTES);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetOnednnConvBwd, ConvBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() ALEXNET_CONV_ATTRIBUTES);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetOnednnConvBwdWeights, ConvKernelGradient,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() ALEXNET_CONV_ATTRIBUTES);

// Whether oneDNN has bfloat16 convolutions on this CPU: it needs AVX-512 at least (AVX2-only CPUs have
// none), and the Python side then rounds operands to bfloat16 itself and convolves in float32.
extern "C" bool alexnet_onednn_has_bf16() {
  try {
    const dnnl::memory::desc src({1, 16, 4, 4}, dtype::bf16, tag::nhwc);
    const dnnl::memory::desc dst({1, 16, 4, 4}, dtype::f32, tag::nhwc);
    const dnnl::memory::desc weights({16, 16, 3, 3}, dtype::bf16, tag::any);
    dnnl::convolution_forward::primitive_desc(CpuEngine(), dnnl::prop_kind::forward_training,
                                              dnnl::algorithm::convolution_direct, src, weights, dst,
                                              {1, 1}, {1, 1}, {1, 1});
    return true;
  } catch (...) {  // dnnl::error where there are none; nothing may leave a function called through ctypes
    return false;
  }
}

// The oneDNN version the library runs on, for reports.
extern "C" const char* alexnet_onednn_version() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  }();
  return version.c_str();
}

// Test hook: how many primitives of each kind this process built, into counts[0..3]: forward, input
// gradient, kernel gradient (convolution), kernel gradient (matrix product). Shows what was built lazily.
extern "C" void alexnet_onednn_primitive_counts(int64_t* counts) {
  for (int kind = 0; kind < kPrimitiveKinds; ++kind) {
    counts[kind] = primitives_built[kind].load(std::memory_order_relaxed);
  }
}

// Test hook: makes every later handler call throw, before any work, what `failure` names: "bad_alloc"
// (std::bad_alloc), "runtime_error" (a std::runtime_error), "not_std" (an object that is no
// std::exception); "" (or null) stops that. Returns false, changing nothing, for any other name. Only the
// tests call it (through onednn_build.set_test_failure), to check that no exception ends the process.
extern "C" bool alexnet_onednn_set_test_failure(const char* failure) {
  int value;
  if (failure == nullptr || *failure == '\0') {
    value = kNoTestFailure;
  } else if (std::strcmp(failure, "bad_alloc") == 0) {
    value = kThrowBadAlloc;
  } else if (std::strcmp(failure, "runtime_error") == 0) {
    value = kThrowRuntimeError;
  } else if (std::strcmp(failure, "not_std") == 0) {
    value = kThrowNonStd;
  } else {
    return false;
  }
  test_failure.store(value, std::memory_order_relaxed);
  return true;
}
