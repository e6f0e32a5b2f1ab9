// The fused residual addition of runner::nn::residual, forward and backward.
//
// Forward:  out = relu?(branch + S(x))
// Backward: from (grad, out): d_branch = grad * [out > 0] (grad alone without ReLU), and
//           d_x = d_branch for the identity; for option A d_x holds d_branch's x-channels at
//           the even (row, column) positions and zero elsewhere. Both land in ONE buffer,
//           [d_branch | d_x], so the backward is a single launch. For the identity d_x equals
//           d_branch and the caller uses d_branch for both: the buffer holds d_branch alone.
//
// S is the identity, or option A (He et al. 2016): x[:, :, ::2, ::2] zero-padded from C_in to
// C_out channels, `before` = (C_out - C_in) / 2 channels ahead of x's, the rest after. Nothing
// is materialised: each output element reads its x element (if any) directly.
//
// Layout: contiguous NCHW float32, the pointers already offset to the first element.
//   branch, out, grad, d_branch: (N, C_out, H_out, W_out) with H_out = ceil(H / 2), W_out = ceil(W / 2)
//   for option A, or the same shape as x for the identity; x, d_x: (N, C_in, H, W).
// The *_vec4 kernels take float4 pointers: the caller uses them only when the element count is
// a multiple of 4 and every pointer is 16-byte aligned.
//
// Launch shape: 1-D blocks of 256 threads; a grid-stride loop over `total` work items (elements,
// float4 groups, or output elements for the option A backward), so any grid size is correct.
// Indices are 64-bit: N * C * H * W can pass 2^31 for a large batch.

typedef long long i64;

#define GRID_STRIDE(i, total) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (i64)blockDim.x * gridDim.x)

__device__ __forceinline__ float relu_if(float v, int relu) { return relu ? fmaxf(v, 0.0f) : v; }

__device__ __forceinline__ float mask_if(float g, float o, int relu) { return (!relu || o > 0.0f) ? g : 0.0f; }

// ---- identity -------------------------------------------------------------------------------

extern "C" __global__ void residual_fwd_identity(float* __restrict__ out, const float* __restrict__ branch,
                                                 const float* __restrict__ x, i64 total, int relu) {
    GRID_STRIDE(i, total) { out[i] = relu_if(branch[i] + x[i], relu); }
}

extern "C" __global__ void residual_fwd_identity_vec4(float4* __restrict__ out, const float4* __restrict__ branch,
                                                      const float4* __restrict__ x, i64 total4, int relu) {
    GRID_STRIDE(i, total4) {
        float4 b = branch[i];
        float4 s = x[i];
        float4 o;
        o.x = relu_if(b.x + s.x, relu);
        o.y = relu_if(b.y + s.y, relu);
        o.z = relu_if(b.z + s.z, relu);
        o.w = relu_if(b.w + s.w, relu);
        out[i] = o;
    }
}

// d is d_branch (`total` long), which is d_x too.
extern "C" __global__ void residual_bwd_identity(float* __restrict__ d, const float* __restrict__ grad,
                                                 const float* __restrict__ out, i64 total, int relu) {
    GRID_STRIDE(i, total) {
        float v = mask_if(grad[i], relu ? out[i] : 0.0f, relu);
        d[i] = v;
    }
}

extern "C" __global__ void residual_bwd_identity_vec4(float4* __restrict__ d, const float4* __restrict__ grad,
                                                      const float4* __restrict__ out, i64 total4, int relu) {
    GRID_STRIDE(i, total4) {
        float4 g = grad[i];
        if (relu) {
            float4 o = out[i];
            g.x = mask_if(g.x, o.x, 1);
            g.y = mask_if(g.y, o.y, 1);
            g.z = mask_if(g.z, o.z, 1);
            g.w = mask_if(g.w, o.w, 1);
        }
        d[i] = g;
    }
}

// ---- option A -------------------------------------------------------------------------------

// One thread per output element (n, co, r, j).
extern "C" __global__ void residual_fwd_option_a(float* __restrict__ out, const float* __restrict__ branch,
                                                 const float* __restrict__ x, i64 total, int c_out, int h_out,
                                                 int w_out, int c_in, int h, int w, int relu) {
    const int before = (c_out - c_in) / 2;
    GRID_STRIDE(i, total) {
        const int j = (int)(i % w_out);
        const int r = (int)((i / w_out) % h_out);
        const int co = (int)((i / ((i64)w_out * h_out)) % c_out);
        const i64 n = i / ((i64)w_out * h_out * c_out);
        const int c = co - before;
        float v = branch[i];
        if (c >= 0 && c < c_in) {
            v += x[((n * c_in + c) * h + 2 * r) * (i64)w + 2 * j];
        }
        out[i] = relu_if(v, relu);
    }
}

// One thread per output element (n, co, r, j): writes d_branch there and, for x's channels, the
// 2x2 block of d_x whose top-left corner it came from (the gradient there, zeros at the three
// skipped positions), so every d_x element is written exactly once and no memset is needed.
// d is [d_branch (total) | d_x (N * c_in * h * w)].
extern "C" __global__ void residual_bwd_option_a(float* __restrict__ d, const float* __restrict__ grad,
                                                 const float* __restrict__ out, i64 total, int c_out, int h_out,
                                                 int w_out, int c_in, int h, int w, int relu) {
    const int before = (c_out - c_in) / 2;
    float* __restrict__ dx = d + total;
    GRID_STRIDE(i, total) {
        const int j = (int)(i % w_out);
        const int r = (int)((i / w_out) % h_out);
        const int co = (int)((i / ((i64)w_out * h_out)) % c_out);
        const i64 n = i / ((i64)w_out * h_out * c_out);
        const float v = mask_if(grad[i], relu ? out[i] : 0.0f, relu);
        d[i] = v;
        const int c = co - before;
        if (c >= 0 && c < c_in) {
            const i64 row = ((n * c_in + c) * h + 2 * r) * (i64)w + 2 * j;
            const bool right = 2 * j + 1 < w;
            const bool below = 2 * r + 1 < h;
            dx[row] = v;
            if (right) dx[row + 1] = 0.0f;
            if (below) dx[row + w] = 0.0f;
            if (right && below) dx[row + w + 1] = 0.0f;
        }
    }
}
