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
// Primitives are built once per shape and cached. Every call brings its own scratchpad and stream, so
// concurrent calls (several simulated devices in one process) never share mutable state.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

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

// Everything one convolution shape needs, built on first use. Operands that are read come in the compute
// type; results are written in the buffers' type.
struct ConvPrimitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
  // The kernel gradient as one matrix product, (KH*KW*C, P) x (P, O) over the P = N*OH*OW output
  // positions, of the unfolded input (im2col) and the output gradient. See KernelGradientByMatmul.
  dnnl::matmul::primitive_desc matmul_pd;
  dnnl::matmul matmul;

  explicit ConvPrimitives(const ConvShape& s) {
    auto& engine = CpuEngine();
    const auto direct = dnnl::algorithm::convolution_direct;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    // `any` for kernels: oneDNN picks its fastest blocked layout.
    const auto weights = s.Weights(s.compute, tag::any);
    fwd_pd = dnnl::convolution_forward::primitive_desc(
        engine, dnnl::prop_kind::forward_training, direct, s.Src(s.compute), weights, s.Dst(s.io),
        s.Strides(), s.PadLow(), s.PadHigh(), attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    // The backward passes' hint: the forward pass as the backward one sees it (gradients in `compute`).
    auto hint = dnnl::convolution_forward::primitive_desc(
        engine, dnnl::prop_kind::forward_training, direct, s.Src(s.compute), weights, s.Dst(s.compute),
        s.Strides(), s.PadLow(), s.PadHigh());
    bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
        engine, direct, s.Src(s.io), weights, s.Dst(s.compute), s.Strides(), s.PadLow(), s.PadHigh(), hint,
        attr);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, direct, s.Src(s.compute), s.Weights(s.io, tag::any), s.Dst(s.compute), s.Strides(),
        s.PadLow(), s.PadHigh(), hint, attr);
    bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
    const int64_t k = s.kh * s.kw * s.c, positions = s.n * s.oh * s.ow;
    matmul_pd = dnnl::matmul::primitive_desc(
        engine, dnnl::memory::desc({k, positions}, s.compute, dims{1, k}),  // the unfolded input, transposed
        dnnl::memory::desc({positions, s.o}, s.compute, dims{s.o, 1}),
        dnnl::memory::desc({k, s.o}, s.io, dims{s.o, 1}), attr);  // HWIO, row-major (kh, kw, c) x o
    matmul = dnnl::matmul(matmul_pd);
  }
};

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
// the padding), in the compute type.
dnnl::memory Unfold(const ConvShape& s, dnnl::memory& src) {
  const int64_t k = s.kh * s.kw * s.c, positions = s.n * s.oh * s.ow;
  dnnl::memory cols(dnnl::memory::desc({positions, k}, s.compute, dims{k, 1}), CpuEngine());
  const size_t item = dnnl::memory::data_type_size(s.compute), row_bytes = s.c * item;
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
  return cols;
}

struct Call {
  const ConvShape& s;
  ConvPrimitives& p;
  dnnl::stream stream{CpuEngine()};

  dnnl::memory User(const dnnl::memory::desc& desc, void* data) {
    return dnnl::memory(desc, CpuEngine(), data);
  }
  dnnl::memory Src(void* x) { return AsWanted(User(s.Src(s.io), x), s.Src(s.compute), stream); }
  dnnl::memory DiffDst(void* dy) { return AsWanted(User(s.Dst(s.io), dy), s.Dst(s.compute), stream); }
  dnnl::memory Weights(void* w, const dnnl::memory::desc& wanted) {
    return AsWanted(User(s.Weights(s.io, tag::hwio), w), wanted, stream);
  }

  void Forward(void* x, void* w, void* y) {
    p.fwd.execute(stream, {{DNNL_ARG_SRC, Src(x)}, {DNNL_ARG_WEIGHTS, Weights(w, p.fwd_pd.weights_desc())},
                           {DNNL_ARG_DST, User(s.Dst(s.io), y)},
                           {DNNL_ARG_SCRATCHPAD, Scratchpad(p.fwd_pd.scratchpad_desc())}});
  }

  void InputGradient(dnnl::memory& diff_dst, void* w, void* dx) {
    p.bwd_data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                                {DNNL_ARG_WEIGHTS, Weights(w, p.bwd_data_pd.weights_desc())},
                                {DNNL_ARG_DIFF_SRC, User(s.Src(s.io), dx)},
                                {DNNL_ARG_SCRATCHPAD, Scratchpad(p.bwd_data_pd.scratchpad_desc())}});
  }

  void KernelGradient(void* x, dnnl::memory& diff_dst, void* dw) {
    if (UseMatmulForKernelGradient(s)) {
      dnnl::memory src = Src(x);
      dnnl::memory cols = Unfold(s, src);
      dnnl::memory out(p.matmul_pd.dst_desc(), CpuEngine(), dw);
      p.matmul.execute(stream, {{DNNL_ARG_SRC, cols}, {DNNL_ARG_WEIGHTS, diff_dst}, {DNNL_ARG_DST, out},
                                {DNNL_ARG_SCRATCHPAD, Scratchpad(p.matmul_pd.scratchpad_desc())}});
      return;
    }
    dnnl::memory user = User(s.Weights(s.io, tag::hwio), dw);
    const auto& wanted = p.bwd_weights_pd.diff_weights_desc();
    dnnl::memory diff_weights = wanted == user.get_desc() ? user : dnnl::memory(wanted, CpuEngine());
    p.bwd_weights.execute(stream, {{DNNL_ARG_SRC, Src(x)}, {DNNL_ARG_DIFF_DST, diff_dst},
                                   {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.bwd_weights_pd.scratchpad_desc())}});
    if (diff_weights != user) dnnl::reorder(diff_weights, user).execute(stream, diff_weights, user);
  }
};

template <typename Body>
ffi::Error Run(const ffi::ErrorOr<ConvShape>& shape, const char* what, Body body) {
  if (shape.has_error()) return shape.error();
  try {
    Call call{shape.value(), PrimitivesFor(shape.value())};
    body(call);
    call.stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv ") + what + ": " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       bool bf16_compute) {
  return Run(ShapeOf(x, w, *y, strides, padding, bf16_compute), "forward", [&](Call& call) {
    call.Forward(x.untyped_data(), w.untyped_data(), y->untyped_data());
  });
}

ffi::Error ConvBackward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer dy,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                        bool bf16_compute) {
  return Run(ShapeOf(x, w, dy, strides, padding, bf16_compute), "backward", [&](Call& call) {
    dnnl::memory diff_dst = call.DiffDst(dy.untyped_data());
    call.InputGradient(diff_dst, w.untyped_data(), dx->untyped_data());
    call.KernelGradient(x.untyped_data(), diff_dst, dw->untyped_data());
  });
}

ffi::Error ConvKernelGradient(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                              bool bf16_compute) {
  return Run(ShapeOf(x, *dw, dy, strides, padding, bf16_compute), "kernel gradient", [&](Call& call) {
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
  } catch (const dnnl::error&) {
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
