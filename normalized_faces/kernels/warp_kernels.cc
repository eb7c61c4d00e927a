// Fused CPU kernels for the spline warp (normalized_faces/warp.py), float32.
//
// The TF-ops warp materializes [B, H, W, N] tensors (a distance from every pixel to every control
// point) several times forward and backward, and samples bilinearly with a gather and a
// scatter-add: memory traffic, not arithmetic, sets its speed. These kernels compute the same
// functions pixel row by pixel row with nothing larger than a row in flight:
//
//   NfGridSpline:  values[b, h, w, k] = sum_n sqrt(max((xs[b, w] - cx[b, n])^2
//                                                      + (ys[b, h] - cy[b, n])^2, floor[b]))
//                                         * weights[b, n, k]
//                                       + linear[b, 0, k] xs[b, w] + linear[b, 1, k] ys[b, h]
//                                       + linear[b, 2, k]
//     (an order-1 polyharmonic spline, phi(r) = r, on a separable grid) and NfGridSplineGrad,
//     its gradient w.r.t. xs, ys, cx, cy, weights and linear;
//
//   NfWarpSample:  out[b, q, c] = the bilinear sample of image[b] at base[q] - flow[b, q], the
//     floor clamped to [0, size - 2] and the fraction to [0, 1] (border values outside, no
//     coordinate gradient there), and NfWarpSampleGrad, its gradient w.r.t. image and flow.
//
// Both gradients follow TF's semantics of the ops warp.py composes (the tests compare them), so
// the fused path and the TF-ops path are the same function with the same derivative.
// Compiled on first use by normalized_faces/kernels/__init__.py.

#include <algorithm>
#include <cmath>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace normalized_faces {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
namespace shape_inference = ::tensorflow::shape_inference;

REGISTER_OP("NfGridSpline")
    .Input("xs: float")       // [B, W]
    .Input("ys: float")       // [B, H]
    .Input("cx: float")       // [B, N]
    .Input("cy: float")       // [B, N]
    .Input("weights: float")  // [B, N, K]
    .Input("linear: float")   // [B, 3, K]: coefficients of x, of y, constant
    .Input("floor: float")    // [B]
    .Output("values: float")  // [B, H, W, K]
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle xs, ys, weights;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &xs));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &ys));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 3, &weights));
      c->set_output(0, c->MakeShape({c->Dim(xs, 0), c->Dim(ys, 1), c->Dim(xs, 1), c->Dim(weights, 2)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("NfGridSplineGrad")
    .Input("grad: float")  // [B, H, W, K]
    .Input("xs: float")
    .Input("ys: float")
    .Input("cx: float")
    .Input("cy: float")
    .Input("weights: float")
    .Input("linear: float")
    .Input("floor: float")
    .Output("grad_xs: float")       // [B, W]
    .Output("grad_ys: float")       // [B, H]
    .Output("grad_cx: float")       // [B, N]
    .Output("grad_cy: float")       // [B, N]
    .Output("grad_weights: float")  // [B, N, K]
    .Output("grad_linear: float")   // [B, 3, K]
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      for (int i = 0; i < 6; ++i) c->set_output(i, c->input(i + 1));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("NfWarpSample")
    .Input("image: float")  // [B, H, W, C]
    .Input("base: float")   // [Q, 2] (x, y) points
    .Input("flow: float")   // [B, Q, 2] (x, y) displacements: samples at base - flow
    .Output("samples: float")  // [B, Q, C]
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle image, flow;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &image));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &flow));
      c->set_output(0, c->MakeShape({c->Dim(flow, 0), c->Dim(flow, 1), c->Dim(image, 3)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("NfWarpSampleGrad")
    .Input("grad: float")  // [B, Q, C]
    .Input("image: float")
    .Input("base: float")
    .Input("flow: float")
    .Output("grad_image: float")
    .Output("grad_flow: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(3));
      return ::tensorflow::OkStatus();
    });

namespace {

// Runs fn(begin, end) over [0, total) on the op's intra-op thread pool.
template <typename Fn>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost_per_unit, Fn fn) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, total, cost_per_unit, fn);
}

// Rows per work unit of the kernel-sum gradient: its per-unit partial sums are what the final
// reduction adds up, so larger blocks mean fewer partials; 8 rows keep enough units for 2+ threads.
constexpr int64_t kRowsPerBlock = 8;

// The spline's inputs, checked, as sizes and data pointers (both grid ops read the same seven).
struct GridInputs {
  int64_t batch, width, height, count, channels;
  const float *xs, *ys, *cx, *cy, *weights, *linear, *floor;
};

Status ReadGridInputs(OpKernelContext* context, int first, GridInputs* in) {
  const Tensor &xs = context->input(first), &ys = context->input(first + 1), &cx = context->input(first + 2),
               &cy = context->input(first + 3), &weights = context->input(first + 4),
               &linear = context->input(first + 5), &floor = context->input(first + 6);
  if (xs.dims() != 2 || ys.dims() != 2 || cx.dims() != 2 || cy.dims() != 2 || weights.dims() != 3 ||
      linear.dims() != 3 || floor.dims() != 1) {
    return InvalidArgument(
        "NfGridSpline: xs [B, W], ys [B, H], cx, cy [B, N], weights [B, N, K], linear [B, 3, K], floor [B]");
  }
  const int64_t batch = xs.dim_size(0);
  if (ys.dim_size(0) != batch || cx.dim_size(0) != batch || cy.dim_size(0) != batch || weights.dim_size(0) != batch ||
      linear.dim_size(0) != batch || floor.dim_size(0) != batch) {
    return InvalidArgument("NfGridSpline: inputs disagree on the batch size");
  }
  if (cy.dim_size(1) != cx.dim_size(1) || weights.dim_size(1) != cx.dim_size(1)) {
    return InvalidArgument("NfGridSpline: cx, cy and weights disagree on the number of centres");
  }
  if (linear.dim_size(1) != 3 || linear.dim_size(2) != weights.dim_size(2)) {
    return InvalidArgument("NfGridSpline: linear must be [B, 3, K] with the weights' K");
  }
  *in = {batch,
         xs.dim_size(1),
         ys.dim_size(1),
         cx.dim_size(1),
         weights.dim_size(2),
         xs.flat<float>().data(),
         ys.flat<float>().data(),
         cx.flat<float>().data(),
         cy.flat<float>().data(),
         weights.flat<float>().data(),
         linear.flat<float>().data(),
         floor.flat<float>().data()};
  return ::tensorflow::OkStatus();
}

class GridSplineOp : public OpKernel {
 public:
  explicit GridSplineOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    GridInputs in;
    OP_REQUIRES_OK(context, ReadGridInputs(context, 0, &in));
    const int64_t batch = in.batch, width = in.width, height = in.height, count = in.count, channels = in.channels;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({batch, height, width, channels}), &output));
    float* out = output->flat<float>().data();

    auto rows = [&](int64_t begin, int64_t end) {
      // Channel-major row buffers (sums[k * width + w]) keep the inner loops contiguous.
      std::vector<float> distance(width), sums(channels * width);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, h = row % height;
        const float* x = in.xs + b * width;
        const float y = in.ys[b * height + h];
        const float lowest = in.floor[b];
        const float* lin = in.linear + b * 3 * channels;
        for (int64_t k = 0; k < channels; ++k) {
          float* sum = sums.data() + k * width;
          const float slope = lin[k], offset = lin[channels + k] * y + lin[2 * channels + k];
          for (int64_t w = 0; w < width; ++w) sum[w] = slope * x[w] + offset;
        }
        for (int64_t n = 0; n < count; ++n) {
          const float centre_x = in.cx[b * count + n];
          const float dy = y - in.cy[b * count + n];
          const float dy2 = dy * dy;
          if (channels == 2) {  // the flow's case, in one pass
            const float wx = in.weights[(b * count + n) * 2], wy = in.weights[(b * count + n) * 2 + 1];
            float* sum_x = sums.data();
            float* sum_y = sums.data() + width;
#pragma omp simd
            for (int64_t w = 0; w < width; ++w) {
              const float dx = x[w] - centre_x;
              const float r = std::sqrt(std::max(dx * dx + dy2, lowest));
              sum_x[w] += wx * r;
              sum_y[w] += wy * r;
            }
            continue;
          }
#pragma omp simd
          for (int64_t w = 0; w < width; ++w) {
            const float dx = x[w] - centre_x;
            distance[w] = std::sqrt(std::max(dx * dx + dy2, lowest));
          }
          for (int64_t k = 0; k < channels; ++k) {
            const float weight = in.weights[(b * count + n) * channels + k];
            float* sum = sums.data() + k * width;
#pragma omp simd
            for (int64_t w = 0; w < width; ++w) sum[w] += weight * distance[w];
          }
        }
        float* out_row = out + row * width * channels;
        for (int64_t w = 0; w < width; ++w)
          for (int64_t k = 0; k < channels; ++k) out_row[w * channels + k] = sums[k * width + w];
      }
    };
    ParallelFor(context, batch * height, width * count * 20, rows);
  }
};

class GridSplineGradOp : public OpKernel {
 public:
  explicit GridSplineGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    GridInputs in;
    OP_REQUIRES_OK(context, ReadGridInputs(context, 1, &in));
    const int64_t batch = in.batch, width = in.width, height = in.height, count = in.count, channels = in.channels;
    OP_REQUIRES(context,
                grad.dims() == 4 && grad.dim_size(0) == batch && grad.dim_size(1) == height &&
                    grad.dim_size(2) == width && grad.dim_size(3) == channels,
                InvalidArgument("NfGridSplineGrad: grad must be [B, H, W, K] = [", batch, ", ", height, ", ", width,
                                ", ", channels, "]"));
    // Each gradient has its input's shape (inputs 1..6 of this op).
    Tensor* grads[6];
    for (int i = 0; i < 6; ++i) {
      OP_REQUIRES_OK(context, context->allocate_output(i, context->input(i + 1).shape(), &grads[i]));
    }
    Tensor *grad_xs = grads[0], *grad_ys = grads[1], *grad_cx = grads[2], *grad_cy = grads[3], *grad_weights = grads[4],
           *grad_linear = grads[5];

    // Each block of rows writes its own partial sums of the per-image gradients (xs, centres,
    // weights, linear); a second pass adds them up per image, so no two threads write the same
    // memory and the result does not depend on the thread count.
    const int64_t blocks_per_image = (height + kRowsPerBlock - 1) / kRowsPerBlock;
    const int64_t per_centre = 2 + channels;  // cx, cy, weights[k]
    const int64_t per_block = count * per_centre + 3 * channels;  // ... then linear[3, K]
    Tensor partial_xs, partial_params;
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT,
                                                   TensorShape({batch, blocks_per_image, width}), &partial_xs));
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT,
                                                   TensorShape({batch, blocks_per_image, per_block}), &partial_params));
    const float* grad_data = grad.flat<float>().data();
    float* partial_xs_data = partial_xs.flat<float>().data();
    float* partial_params_data = partial_params.flat<float>().data();
    float* grad_ys_data = grad_ys->flat<float>().data();

    auto blocks = [&](int64_t begin, int64_t end) {
      std::vector<float> upstream(channels * width), weighted(width), distance(width);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / blocks_per_image, block = unit % blocks_per_image;
        const float* x = in.xs + b * width;
        const float lowest = in.floor[b];
        const float* lin = in.linear + b * 3 * channels;
        float* dxs = partial_xs_data + unit * width;
        float* dparams = partial_params_data + unit * per_block;
        float* dlinear = dparams + count * per_centre;
        std::fill(dxs, dxs + width, 0.0f);
        std::fill(dparams, dparams + per_block, 0.0f);
        const int64_t h_end = std::min(height, (block + 1) * kRowsPerBlock);
        for (int64_t h = block * kRowsPerBlock; h < h_end; ++h) {
          const float y = in.ys[b * height + h];
          const float* g = grad_data + (b * height + h) * width * channels;
          for (int64_t w = 0; w < width; ++w)
            for (int64_t k = 0; k < channels; ++k) upstream[k * width + w] = g[w * channels + k];
          float dys = 0.0f;
          // The linear term: d/dlinear = (x, y, 1) g; d/dx = linear[0] . g, d/dy = linear[1] . g.
          for (int64_t k = 0; k < channels; ++k) {
            const float* up = upstream.data() + k * width;
            float sum = 0.0f, sum_x = 0.0f;
#pragma omp simd reduction(+ : sum, sum_x)
            for (int64_t w = 0; w < width; ++w) {
              sum += up[w];
              sum_x += up[w] * x[w];
            }
            const float slope = lin[k];
#pragma omp simd
            for (int64_t w = 0; w < width; ++w) dxs[w] += slope * up[w];
            dlinear[k] += sum_x;
            dlinear[channels + k] += sum * y;
            dlinear[2 * channels + k] += sum;
            dys += lin[channels + k] * sum;
          }
          for (int64_t n = 0; n < count; ++n) {
            const float centre_x = in.cx[b * count + n];
            const float dy = y - in.cy[b * count + n];
            const float dy2 = dy * dy;
            const float* weight = in.weights + (b * count + n) * channels;
            float* dcentre = dparams + n * per_centre;  // cx, cy, weights[k]
            float sum_t = 0.0f, sum_t_dx = 0.0f;
            if (channels == 2) {
              // The flow's case, in one pass: one square root and one division per pixel.
              const float* up_x = upstream.data();
              const float* up_y = upstream.data() + width;
              const float wx = weight[0], wy = weight[1];
              float sum_rx = 0.0f, sum_ry = 0.0f;
#pragma omp simd reduction(+ : sum_t, sum_t_dx, sum_rx, sum_ry)
              for (int64_t w = 0; w < width; ++w) {
                const float dx = x[w] - centre_x;
                const float squared = dx * dx + dy2;
                const float r = std::sqrt(std::max(squared, lowest));
                // d sqrt(max(s, floor)) / d s = 1 / (2 r) where s > floor (TF's Maximum sends the
                // gradient to its first input only where that is the larger), d s / d dx = 2 dx.
                const float t = squared > lowest ? (up_x[w] * wx + up_y[w] * wy) / r : 0.0f;
                dxs[w] += t * dx;
                sum_t += t;
                sum_t_dx += t * dx;
                sum_rx += up_x[w] * r;
                sum_ry += up_y[w] * r;
              }
              dcentre[2] += sum_rx;
              dcentre[3] += sum_ry;
            } else {
              // weighted[w] = upstream[w] . weights[n]: the gradient w.r.t. this centre's kernel value.
              std::fill(weighted.begin(), weighted.end(), 0.0f);
              for (int64_t k = 0; k < channels; ++k) {
                const float* up = upstream.data() + k * width;
                const float wk = weight[k];
#pragma omp simd
                for (int64_t w = 0; w < width; ++w) weighted[w] += up[w] * wk;
              }
#pragma omp simd reduction(+ : sum_t, sum_t_dx)
              for (int64_t w = 0; w < width; ++w) {
                const float dx = x[w] - centre_x;
                const float squared = dx * dx + dy2;
                const float r = std::sqrt(std::max(squared, lowest));
                distance[w] = r;
                const float t = squared > lowest ? weighted[w] / r : 0.0f;  // as above
                dxs[w] += t * dx;
                sum_t += t;
                sum_t_dx += t * dx;
              }
              for (int64_t k = 0; k < channels; ++k) {
                const float* up = upstream.data() + k * width;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t w = 0; w < width; ++w) sum += up[w] * distance[w];
                dcentre[2 + k] += sum;
              }
            }
            dys += sum_t * dy;
            dcentre[0] -= sum_t_dx;
            dcentre[1] -= sum_t * dy;
          }
          grad_ys_data[b * height + h] = dys;
        }
      }
    };
    ParallelFor(context, batch * blocks_per_image, kRowsPerBlock * width * count * (40 + 10 * channels), blocks);

    float* grad_xs_data = grad_xs->flat<float>().data();
    float* grad_cx_data = grad_cx->flat<float>().data();
    float* grad_cy_data = grad_cy->flat<float>().data();
    float* grad_weights_data = grad_weights->flat<float>().data();
    float* grad_linear_data = grad_linear->flat<float>().data();
    auto reduce = [&](int64_t begin, int64_t end) {
      std::vector<float> params(per_block);
      for (int64_t b = begin; b < end; ++b) {
        float* dxs = grad_xs_data + b * width;
        std::fill(dxs, dxs + width, 0.0f);
        std::fill(params.begin(), params.end(), 0.0f);
        for (int64_t block = 0; block < blocks_per_image; ++block) {
          const float* part = partial_xs_data + (b * blocks_per_image + block) * width;
          for (int64_t w = 0; w < width; ++w) dxs[w] += part[w];
          const float* part_params = partial_params_data + (b * blocks_per_image + block) * per_block;
          for (int64_t i = 0; i < per_block; ++i) params[i] += part_params[i];
        }
        for (int64_t n = 0; n < count; ++n) {
          grad_cx_data[b * count + n] = params[n * per_centre + 0];
          grad_cy_data[b * count + n] = params[n * per_centre + 1];
          for (int64_t k = 0; k < channels; ++k)
            grad_weights_data[(b * count + n) * channels + k] = params[n * per_centre + 2 + k];
        }
        std::copy(params.begin() + count * per_centre, params.end(), grad_linear_data + b * 3 * channels);
      }
    };
    ParallelFor(context, batch, blocks_per_image * (width + per_block), reduce);
  }
};

// The bilinear footprint of one sample point: corner columns/rows and fractions, with the TF-ops
// version's clamping, and whether each fraction passes a gradient to its coordinate.
struct Footprint {
  int64_t x0, x1, y0, y1;
  float ax, ay;
  bool ax_live, ay_live;
};

inline void Corner(float q, int64_t size, int64_t* q0, int64_t* q1, float* fraction, bool* live) {
  const float top = static_cast<float>(std::max<int64_t>(size - 2, 0));
  // std::min/max return their first argument for a NaN second one: a NaN coordinate still indexes
  // inside the image, and its NaN fraction makes the sample NaN, as the TF ops do.
  const float start = std::max(0.0f, std::min(top, std::floor(q)));
  const float raw = q - start;
  *q0 = static_cast<int64_t>(start);
  *q1 = std::min(*q0 + 1, size - 1);
  *fraction = std::max(0.0f, std::min(1.0f, raw));
  *live = raw >= 0.0f && raw <= 1.0f;  // tf.clip_by_value passes the gradient on [min, max]
}

inline Footprint Locate(const float* base, const float* flow, int64_t height, int64_t width) {
  Footprint f;
  Corner(base[0] - flow[0], width, &f.x0, &f.x1, &f.ax, &f.ax_live);
  Corner(base[1] - flow[1], height, &f.y0, &f.y1, &f.ay, &f.ay_live);
  return f;
}

// Samples queries [begin, end) of the flattened [B, Q] range. kChannels > 0 fixes the channel
// count at compile time (the RGB case, unrolled); 0 reads it from `channels`.
template <int kChannels>
void SampleRange(const float* pixels, const float* base, const float* flow, float* out, int64_t begin, int64_t end,
                 int64_t queries, int64_t height, int64_t width, int64_t channels) {
  const int64_t c_count = kChannels > 0 ? kChannels : channels;
  int64_t b = begin / queries, q = begin % queries;
  for (int64_t i = begin; i < end; ++i, ++q) {
    if (q == queries) q = 0, ++b;
    const Footprint f = Locate(base + 2 * q, flow + 2 * i, height, width);
    const float* corners = pixels + b * height * width * c_count;
    const float* p00 = corners + (f.y0 * width + f.x0) * c_count;
    const float* p01 = corners + (f.y0 * width + f.x1) * c_count;
    const float* p10 = corners + (f.y1 * width + f.x0) * c_count;
    const float* p11 = corners + (f.y1 * width + f.x1) * c_count;
    const float w00 = (1 - f.ax) * (1 - f.ay), w01 = f.ax * (1 - f.ay), w10 = (1 - f.ax) * f.ay, w11 = f.ax * f.ay;
    float* o = out + i * c_count;
    for (int64_t c = 0; c < c_count; ++c) o[c] = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
  }
}

// The gradient of image b's samples w.r.t. its pixels (a scatter) and w.r.t. the flow.
template <int kChannels>
void SampleGradImage(const float* grad, const float* pixels, const float* base, const float* flow, float* d_image,
                     float* d_flow, int64_t b, int64_t queries, int64_t height, int64_t width, int64_t channels) {
  const int64_t c_count = kChannels > 0 ? kChannels : channels;
  const int64_t image_size = height * width * c_count;
  const float* corners = pixels + b * image_size;
  float* d_corners = d_image + b * image_size;
  std::fill(d_corners, d_corners + image_size, 0.0f);
  for (int64_t q = 0; q < queries; ++q) {
    const int64_t i = b * queries + q;
    const Footprint f = Locate(base + 2 * q, flow + 2 * i, height, width);
    const int64_t i00 = (f.y0 * width + f.x0) * c_count, i01 = (f.y0 * width + f.x1) * c_count,
                  i10 = (f.y1 * width + f.x0) * c_count, i11 = (f.y1 * width + f.x1) * c_count;
    const float w00 = (1 - f.ax) * (1 - f.ay), w01 = f.ax * (1 - f.ay), w10 = (1 - f.ax) * f.ay, w11 = f.ax * f.ay;
    const float* up = grad + i * c_count;
    float slope_x = 0.0f, slope_y = 0.0f;
    for (int64_t c = 0; c < c_count; ++c) {
      const float u = up[c];
      const float v00 = corners[i00 + c], v01 = corners[i01 + c], v10 = corners[i10 + c], v11 = corners[i11 + c];
      slope_x += u * ((1 - f.ay) * (v01 - v00) + f.ay * (v11 - v10));
      slope_y += u * ((1 - f.ax) * (v10 - v00) + f.ax * (v11 - v01));
      d_corners[i00 + c] += w00 * u;
      d_corners[i01 + c] += w01 * u;
      d_corners[i10 + c] += w10 * u;
      d_corners[i11 + c] += w11 * u;
    }
    // The sample point is base - flow: its gradient w.r.t. the flow is minus the slope.
    d_flow[2 * i] = f.ax_live ? -slope_x : 0.0f;
    d_flow[2 * i + 1] = f.ay_live ? -slope_y : 0.0f;
  }
}

Status CheckSampleInputs(const Tensor& image, const Tensor& base, const Tensor& flow) {
  if (image.dims() != 4 || base.dims() != 2 || flow.dims() != 3 || base.dim_size(1) != 2 || flow.dim_size(2) != 2) {
    return InvalidArgument("NfWarpSample: image [B, H, W, C], base [Q, 2], flow [B, Q, 2]");
  }
  if (flow.dim_size(0) != image.dim_size(0) || flow.dim_size(1) != base.dim_size(0)) {
    return InvalidArgument("NfWarpSample: image, base and flow disagree on B or Q");
  }
  if (image.dim_size(1) < 1 || image.dim_size(2) < 1) return InvalidArgument("NfWarpSample: empty image");
  return ::tensorflow::OkStatus();
}

class WarpSampleOp : public OpKernel {
 public:
  explicit WarpSampleOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor &image = context->input(0), &base = context->input(1), &flow = context->input(2);
    OP_REQUIRES_OK(context, CheckSampleInputs(image, base, flow));
    const int64_t batch = image.dim_size(0), height = image.dim_size(1), width = image.dim_size(2),
                  channels = image.dim_size(3), queries = base.dim_size(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, queries, channels}), &output));
    const float* pixels = image.flat<float>().data();
    const float* base_data = base.flat<float>().data();
    const float* flow_data = flow.flat<float>().data();
    float* out = output->flat<float>().data();
    auto samples = [&](int64_t begin, int64_t end) {
      if (channels == 3) {
        SampleRange<3>(pixels, base_data, flow_data, out, begin, end, queries, height, width, channels);
      } else {
        SampleRange<0>(pixels, base_data, flow_data, out, begin, end, queries, height, width, channels);
      }
    };
    ParallelFor(context, batch * queries, 20 * channels + 40, samples);
  }
};

class WarpSampleGradOp : public OpKernel {
 public:
  explicit WarpSampleGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor &grad = context->input(0), &image = context->input(1), &base = context->input(2),
                 &flow = context->input(3);
    OP_REQUIRES_OK(context, CheckSampleInputs(image, base, flow));
    const int64_t batch = image.dim_size(0), height = image.dim_size(1), width = image.dim_size(2),
                  channels = image.dim_size(3), queries = base.dim_size(0);
    OP_REQUIRES(context,
                grad.dims() == 3 && grad.dim_size(0) == batch && grad.dim_size(1) == queries &&
                    grad.dim_size(2) == channels,
                InvalidArgument("NfWarpSampleGrad: grad must be [B, Q, C]"));
    Tensor *grad_image, *grad_flow;
    OP_REQUIRES_OK(context, context->allocate_output(0, image.shape(), &grad_image));
    OP_REQUIRES_OK(context, context->allocate_output(1, flow.shape(), &grad_flow));
    const float* g = grad.flat<float>().data();
    const float* pixels = image.flat<float>().data();
    const float* base_data = base.flat<float>().data();
    const float* flow_data = flow.flat<float>().data();
    float* d_image = grad_image->flat<float>().data();
    float* d_flow = grad_flow->flat<float>().data();
    // One image per work unit: the scatter into an image's gradient stays on one thread.
    auto images = [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        if (channels == 3) {
          SampleGradImage<3>(g, pixels, base_data, flow_data, d_image, d_flow, b, queries, height, width, channels);
        } else {
          SampleGradImage<0>(g, pixels, base_data, flow_data, d_image, d_flow, b, queries, height, width, channels);
        }
      }
    };
    ParallelFor(context, batch, queries * (30 * channels + 40), images);
  }
};

REGISTER_KERNEL_BUILDER(Name("NfGridSpline").Device(DEVICE_CPU), GridSplineOp);
REGISTER_KERNEL_BUILDER(Name("NfGridSplineGrad").Device(DEVICE_CPU), GridSplineGradOp);
REGISTER_KERNEL_BUILDER(Name("NfWarpSample").Device(DEVICE_CPU), WarpSampleOp);
REGISTER_KERNEL_BUILDER(Name("NfWarpSampleGrad").Device(DEVICE_CPU), WarpSampleGradOp);

}  // namespace
}  // namespace normalized_faces
