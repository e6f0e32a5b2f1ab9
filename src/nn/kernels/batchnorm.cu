// Spatial batch normalisation with an optional ReLU, forward and backward, for
// runner::nn::batch_norm on a CUDA device. The CPU oracle is nn::ops::batchnorm::batch_norm_slow
// (Candle's own BatchNorm); `runner bench --op batchnorm --device cuda:N` checks these kernels
// against it.
//
// Forward:  y = relu?(gamma * (x - mean) * invstd + beta), invstd = 1 / sqrt(var + eps), with
//           (mean, var) the batch's per-channel mean and biased variance in train mode, the
//           running statistics in eval mode.
// Backward: g = dy * [y > 0] (dy alone without ReLU; y's sign recomputed from x, bit for bit as
//           the forward computed it), xhat = (x - mean) * invstd,
//           dbeta = sum g, dgamma = sum g * xhat over each channel's M = N * H * W values, and
//           dx = gamma * invstd * (g - dbeta / M - xhat * dgamma / M) in train mode,
//           dx = gamma * invstd * g in eval mode (the statistics are constants there).
//
// Sums are deterministic: each channel's values are split into S fixed parts (images s, s + S,
// s + 2S, ...), each part is summed by one block in a fixed tree, and the S partial sums are
// added in order by one thread. No atomics, so a result never depends on scheduling.
// The statistics are summed in double around a shift (the channel's first value), so the
// variance loses nothing to cancellation; they are handed on as float.
//
// Layout: contiguous NCHW float32, pointers already offset to the first element.
//   x, y, dy, dx: (N, C, HW), channel of element i = (i / HW) % C;
//   stats: [mean (C) | var (C) | running mean (C) | running var (C)] float, what bn_stats_*
//   write: the batch's mean and biased variance, and the running statistics rm, rv (C each)
//   moved towards them, r <- (1 - momentum) * r + momentum * s with the unbiased variance
//   (PyTorch's rule);
//   p: [mean (C) | var (C) | gamma (C) | beta (C)] float, the normalisation's parameters;
//   part: (C, S, 2) double, the partial sums;
//   the backward's output: [dx (N·C·HW) | dp (4C)], dp = [0 | 0 | dgamma | dbeta] (the
//   statistics' share of the gradient is inside dx).
//
// Launch shape: the *_partial kernels take a grid of (C, S) blocks of 256 threads (the tree
// reduction assumes exactly 256); the *_finish kernels one thread per channel (any 1-D grid);
// the element-wise kernels 1-D blocks of 256 threads with a grid-stride loop over all elements,
// so any grid size is correct. Indices are 64-bit.

typedef long long i64;

#define BLOCK 256

#define GRID_STRIDE(i, total) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (i64)blockDim.x * gridDim.x)

// Sums a and b over the block's 256 threads in a fixed order; thread 0 gets the totals.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
    __shared__ double sa[BLOCK];
    __shared__ double sb[BLOCK];
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (int step = BLOCK / 2; step > 0; step >>= 1) {
        if (threadIdx.x < step) {
            sa[threadIdx.x] += sa[threadIdx.x + step];
            sb[threadIdx.x] += sb[threadIdx.x + step];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// The e-th value of part s of channel ch: images s, s + S, ... in order, HW values each.
__device__ __forceinline__ i64 part_index(i64 e, int ch, int s, int S, int c, int hw) {
    i64 img = s + (e / hw) * S;
    return (img * c + ch) * hw + e % hw;
}

// Values in part s: the images s, s + S, ... below n.
__device__ __forceinline__ i64 part_len(int n, int s, int S, int hw) {
    return (i64)((n - s + S - 1) / S) * hw;
}

// ---- statistics --------------------------------------------------------------------------------

// part[ch][s] = (sum of (x - k), sum of (x - k)^2) over part s of channel ch, k = the channel's
// first value x[0, ch, 0].
extern "C" __global__ void bn_stats_partial(const float* __restrict__ x, double* __restrict__ part, int n, int c,
                                            int hw, int S) {
    int ch = blockIdx.x, s = blockIdx.y;
    double k = x[(i64)ch * hw];
    double a = 0.0, b = 0.0;
    i64 len = part_len(n, s, S, hw);
    for (i64 e = threadIdx.x; e < len; e += BLOCK) {
        double d = (double)x[part_index(e, ch, s, S, c, hw)] - k;
        a += d;
        b += d * d;
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        part[((i64)ch * S + s) * 2] = a;
        part[((i64)ch * S + s) * 2 + 1] = b;
    }
}

// stats = [mean | biased var | moved rm | moved rv] from the partial sums of bn_stats_partial.
extern "C" __global__ void bn_stats_finish(const float* __restrict__ x, const double* __restrict__ part,
                                           const float* __restrict__ rm, const float* __restrict__ rv,
                                           float* __restrict__ stats, int n, int c, int hw, int S,
                                           double momentum) {
    GRID_STRIDE(ch, c) {
        double a = 0.0, b = 0.0;
        for (int s = 0; s < S; s++) {
            a += part[(ch * S + s) * 2];
            b += part[(ch * S + s) * 2 + 1];
        }
        double m = (double)n * hw;
        double d = a / m;
        double var = b / m - d * d;
        double mean = (double)x[ch * hw] + d;
        var = var > 0.0 ? var : 0.0;
        stats[ch] = (float)mean;
        stats[c + ch] = (float)var;
        stats[2 * c + ch] = (float)((1.0 - momentum) * rm[ch] + momentum * mean);
        stats[3 * c + ch] = (float)((1.0 - momentum) * rv[ch] + momentum * var * m / (m - 1.0));
    }
}

// ---- normalisation -----------------------------------------------------------------------------

__device__ __forceinline__ float inv_std(const float* p, int c, int ch, float eps) {
    return 1.0f / sqrtf(p[c + ch] + eps);
}

// gamma * (x - mean) * invstd + beta: the forward's value before the ReLU, the one expression
// both passes use, so the backward's mask is the forward's exactly.
__device__ __forceinline__ float normalized(float x, const float* p, int c, int ch, float invstd) {
    return p[2 * c + ch] * (x - p[ch]) * invstd + p[3 * c + ch];
}

extern "C" __global__ void bn_forward(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ p,
                                      i64 total, int c, int hw, float eps, int relu) {
    GRID_STRIDE(i, total) {
        int ch = (int)((i / hw) % c);
        float v = normalized(x[i], p, c, ch, inv_std(p, c, ch, eps));
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// ---- backward ----------------------------------------------------------------------------------

// g: dy where the forward's ReLU passed it (or always, without ReLU).
__device__ __forceinline__ float masked(float dy, float x, const float* p, int c, int ch, float invstd, int relu) {
    return (!relu || normalized(x, p, c, ch, invstd) > 0.0f) ? dy : 0.0f;
}

// part[ch][s] = (sum of g * xhat, sum of g) over part s of channel ch.
extern "C" __global__ void bn_grad_partial(const float* __restrict__ dy, const float* __restrict__ x,
                                           const float* __restrict__ p, double* __restrict__ part, int n, int c,
                                           int hw, int S, float eps, int relu) {
    int ch = blockIdx.x, s = blockIdx.y;
    float invstd = inv_std(p, c, ch, eps);
    double a = 0.0, b = 0.0;
    i64 len = part_len(n, s, S, hw);
    for (i64 e = threadIdx.x; e < len; e += BLOCK) {
        i64 i = part_index(e, ch, s, S, c, hw);
        float g = masked(dy[i], x[i], p, c, ch, invstd, relu);
        a += (double)g * (double)((x[i] - p[ch]) * invstd);
        b += (double)g;
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        part[((i64)ch * S + s) * 2] = a;
        part[((i64)ch * S + s) * 2 + 1] = b;
    }
}

// dp = [0 | 0 | dgamma | dbeta] from the partial sums of bn_grad_partial.
extern "C" __global__ void bn_grad_finish(const double* __restrict__ part, float* __restrict__ dp, int c, int S) {
    GRID_STRIDE(ch, c) {
        double a = 0.0, b = 0.0;
        for (int s = 0; s < S; s++) {
            a += part[(ch * S + s) * 2];
            b += part[(ch * S + s) * 2 + 1];
        }
        dp[ch] = 0.0f;
        dp[c + ch] = 0.0f;
        dp[2 * c + ch] = (float)a;
        dp[3 * c + ch] = (float)b;
    }
}

// dx from dy, x, p and dp (after bn_grad_finish); train = 0 for eval mode.
extern "C" __global__ void bn_backward_dx(float* __restrict__ dx, const float* __restrict__ dy,
                                          const float* __restrict__ x, const float* __restrict__ p,
                                          const float* __restrict__ dp, i64 total, int c, int hw, float m, float eps,
                                          int relu, int train) {
    GRID_STRIDE(i, total) {
        int ch = (int)((i / hw) % c);
        float invstd = inv_std(p, c, ch, eps);
        float g = masked(dy[i], x[i], p, c, ch, invstd, relu);
        float scale = p[2 * c + ch] * invstd;
        if (train) {
            float xhat = (x[i] - p[ch]) * invstd;
            dx[i] = scale * (g - dp[3 * c + ch] / m - xhat * dp[2 * c + ch] / m);
        } else {
            dx[i] = scale * g;
        }
    }
}
