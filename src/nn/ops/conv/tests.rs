//! The fast op against Candle's convolution: values and both gradients, on every kernel path
//! this machine supports.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::nn::cpu::conv::job::images_per_run;
use crate::nn::cpu::conv::plan::without_winograd;
use crate::nn::cpu::conv::scratch::misalignment;
use crate::nn::cpu::conv::{forward, input_grad, weight_grad};

/// The instruction sets this CPU runs; those it lacks are reported as skipped.
fn isas() -> Vec<Isa> {
    let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
    all.into_iter().filter(|&i| supported_or_skip(i)).collect()
}

/// Whether this CPU runs `isa`; if not, says on stderr that its kernels were not tested.
fn supported_or_skip(isa: Isa) -> bool {
    let ok = isa.supported();
    if !ok {
        eprintln!("skipped: this CPU has no {isa:?}, so its kernels were not tested");
    }
    ok
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Each element within 1e-4 of the expected value, relative to its size plus the typical size
/// (sums of many products can cancel to near zero).
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len().max(1) as f32).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * (w.abs() + rms);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (rms {rms})");
    }
}

/// y, dx and dw of the fast op (forced to `isa`) and of Candle's, for loss = Σ y · r.
fn compare(isa: Isa, x_shape: (usize, usize, usize, usize), cout: usize, k: usize, stride: usize) {
    let dev = Device::Cpu;
    let pad = k / 2;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., x_shape, &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, x_shape.1, k, k), &dev).unwrap()).unwrap();
    let run = |fast: bool| {
        let y = if fast {
            conv2d_with(x.as_tensor(), w.as_tensor(), stride, pad, isa).unwrap()
        } else {
            conv2d_slow(x.as_tensor(), w.as_tensor(), stride, pad).unwrap()
        };
        y
    };
    let y_slow = run(false);
    let r = Tensor::randn(0f32, 1., y_slow.shape(), &dev).unwrap();
    let grads = |y: &Tensor| {
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            values(g.get(x.as_tensor()).unwrap()),
            values(g.get(w.as_tensor()).unwrap()),
        )
    };
    let (h, wd) = (x_shape.2, x_shape.3);
    let (dx_slow, dw_slow) = if stride == 1 || h % 2 == wd % 2 {
        grads(&y_slow)
    } else {
        // Candle's backward derives one output padding from the height and applies it to the
        // width too, which fails when their parities differ: the same formulas with room for
        // both, cut back to the input's size.
        let dx = r.conv_transpose2d(w.as_tensor(), pad, stride - 1, stride, 1).unwrap();
        let dx = dx.narrow(2, 0, h).unwrap().narrow(3, 0, wd).unwrap();
        let xt = x.as_tensor().transpose(0, 1).unwrap();
        let dw = xt.conv2d(&r.transpose(0, 1).unwrap(), pad, 1, stride, 1).unwrap();
        let dw = dw
            .transpose(0, 1)
            .unwrap()
            .narrow(2, 0, k)
            .unwrap()
            .narrow(3, 0, k)
            .unwrap();
        (values(&dx), values(&dw))
    };
    let y_fast = run(true);
    assert_eq!(y_fast.dims(), y_slow.dims());
    let case = format!("{isa:?} x {x_shape:?} → {cout}, {k}×{k} stride {stride}");
    assert_close(&format!("y {case}"), &values(&y_fast), &values(&y_slow));
    let (dx_fast, dw_fast) = grads(&y_fast);
    assert_close(&format!("dx {case}"), &dx_fast, &dx_slow);
    assert_close(&format!("dw {case}"), &dw_fast, &dw_slow);
}

#[test]
fn three_by_three_stride_one_matches_candle_on_every_path() {
    for isa in isas() {
        compare(isa, (2, 16, 8, 8), 16, 3, 1);
        compare(isa, (3, 32, 16, 16), 32, 3, 1);
        compare(isa, (2, 64, 4, 4), 64, 3, 1);
        compare(isa, (4, 8, 32, 32), 16, 3, 1);
    }
}

#[test]
fn odd_sizes_and_channel_counts_match_candle_on_every_path() {
    for isa in isas() {
        compare(isa, (1, 3, 7, 5), 10, 3, 1); // the stem's 3 input channels, batch 1
        compare(isa, (2, 10, 5, 7), 24, 3, 1);
        compare(isa, (2, 24, 3, 9), 3, 3, 1);
        compare(isa, (1, 5, 1, 1), 7, 3, 1); // one pixel: only the centre tap reads it
        compare(isa, (1, 9, 2, 1), 9, 3, 2);
        // 5 pixel vectors: a tile of 3 and one of 2
        compare(isa, (1, 8, 8, 10), 8, 3, 1);
        // three output-channel vectors, the last partial
        compare(isa, (2, 5, 6, 6), 40, 3, 1);
        // rows of whole 8-pixel vectors (AVX2's zero-bordered copies): 3 vectors, a tile of 2
        // and one of 1; 11 = 6 + 5 and 7 = 6 + 1 output channels, last tiles partial
        compare(isa, (1, 4, 3, 8), 11, 3, 1);
        compare(isa, (2, 6, 5, 16), 7, 3, 1);
        compare(isa, (2, 6, 5, 16), 7, 3, 2);
    }
}

#[test]
fn stride_two_matches_candle_on_odd_and_even_maps() {
    for isa in isas() {
        compare(isa, (2, 16, 8, 8), 32, 3, 2);
        compare(isa, (2, 10, 7, 5), 24, 3, 2);
        compare(isa, (1, 24, 6, 9), 10, 3, 2);
        compare(isa, (3, 32, 16, 16), 64, 3, 2);
    }
}

#[test]
fn one_by_one_matches_candle_at_both_strides() {
    for isa in isas() {
        compare(isa, (2, 16, 8, 8), 32, 1, 2);
        compare(isa, (1, 10, 7, 5), 24, 1, 2);
        compare(isa, (2, 24, 6, 7), 10, 1, 1);
        compare(isa, (2, 3, 5, 5), 3, 1, 1);
        compare(isa, (2, 32, 4, 6), 64, 1, 2); // four channel vectors per weight-gradient tile
    }
}

#[test]
fn weight_gradient_is_bit_identical_across_runs() {
    let dev = Device::Cpu;
    // enough images for every thread to take a share
    let x = Tensor::randn(0f32, 1., (9, 16, 12, 12), &dev).unwrap();
    let dy = Tensor::randn(0f32, 1., (9, 32, 6, 6), &dev).unwrap();
    for isa in isas() {
        let op = ConvOp {
            g: ConvGeom::new(9, 16, 32, 12, 12, 3, 2),
            isa,
        };
        let a = values(&x.apply_op2_no_bwd(&dy, &WeightGradOp(op)).unwrap());
        let b = values(&x.apply_op2_no_bwd(&dy, &WeightGradOp(op)).unwrap());
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?}");
    }
}

#[test]
fn weight_gradient_does_not_depend_on_the_thread_count() {
    let dev = Device::Cpu;
    // 40 images of 6×6 or 8×8 output planes: three runs of partial sums (see `images_per_run`); the
    // stride-1 case takes the AVX2 path's Winograd weight gradient
    let n = 40;
    for (h, stride) in [(12, 2), (8, 1)] {
        let g = ConvGeom::new(n, 16, 32, h, h, 3, stride);
        assert!(n > 2 * images_per_run(g.hw()));
        let x = Tensor::randn(0f32, 1., (n, 16, h, h), &dev).unwrap();
        let dy = Tensor::randn(0f32, 1., (n, 32, g.ho, g.wo), &dev).unwrap();
        for isa in isas() {
            let op = ConvOp { g, isa };
            let dw: Vec<Vec<u32>> = [1, 3]
                .map(|t| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                    let dw = pool.install(|| x.apply_op2_no_bwd(&dy, &WeightGradOp(op)).unwrap());
                    values(&dw).iter().map(|v| v.to_bits()).collect()
                })
                .into();
            assert_eq!(dw[0], dw[1], "{isa:?} stride {stride}");
        }
    }
}

#[test]
fn weight_gradient_does_not_depend_on_where_its_buffers_start() {
    let dev = Device::Cpu;
    // 16×16 planes: a whole number of pixel vectors, where the kernels care about alignment
    let x = Tensor::randn(0f32, 1., (4, 16, 16, 16), &dev).unwrap();
    let len = 4 * 16 * 16 * 16;
    let flat = Tensor::randn(0f32, 1., len + 8, &dev).unwrap();
    // the same dy values, starting 0..4 floats into an allocation
    let at = |k: usize| {
        flat.narrow(0, 0, len)
            .unwrap()
            .copy()
            .unwrap()
            .pad_with_zeros(0, k, 8 - k)
            .unwrap()
            .narrow(0, k, len)
            .unwrap()
            .reshape((4, 16, 16, 16))
            .unwrap()
    };
    for isa in isas() {
        let op = ConvOp {
            g: ConvGeom::new(4, 16, 16, 16, 16, 3, 1),
            isa,
        };
        let first = values(&x.apply_op2_no_bwd(&at(0), &WeightGradOp(op)).unwrap());
        for k in 1..4 {
            let other = values(&x.apply_op2_no_bwd(&at(k), &WeightGradOp(op)).unwrap());
            assert!(
                first.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?}, offset {k}"
            );
        }
    }
}

#[test]
fn other_shapes_fall_back_to_candle() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 4, 9, 9), &dev).unwrap();
    let w = Tensor::randn(0f32, 1., (6, 4, 5, 5), &dev).unwrap();
    let y = conv2d(&x, &w, 1, 2).unwrap();
    assert_eq!(values(&y), values(&conv2d_slow(&x, &w, 1, 2).unwrap()));
    let w3 = Tensor::randn(0f32, 1., (6, 4, 3, 3), &dev).unwrap();
    let y = conv2d(&x, &w3, 1, 0).unwrap();
    assert_eq!(y.dims(), &[2, 6, 7, 7]);
}

#[test]
fn mismatched_channels_are_refused() {
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((8, 5, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &w, 1, 1).is_err());
}

/// Kernels shift their pixel-vector grid to the buffers' alignment; every shift must give
/// Candle's values (the grid only changes which lanes sum what).
#[test]
fn results_do_not_depend_on_buffer_alignment() {
    let dev = Device::Cpu;
    for (stride, cin, cout) in [(1, 16, 16), (2, 8, 16)] {
        let (n, h) = (2, 16);
        let g = ConvGeom::new(n, cin, cout, h, h, 3, stride);
        let x = Tensor::randn(0f32, 1., (n, cin, h, h), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (cout, cin, 3, 3), &dev).unwrap();
        let dy = Tensor::randn(0f32, 1., (n, cout, g.ho, g.wo), &dev).unwrap();
        let y_want = values(&conv2d_slow(&x, &w, stride, 1).unwrap());
        let out_size = (g.ho - 1) * stride + 1;
        let dx_want = values(&dy.conv_transpose2d(&w, 1, h - out_size, stride, 1).unwrap());
        let xt = x.transpose(0, 1).unwrap();
        let dw_want = xt.conv2d(&dy.transpose(0, 1).unwrap(), 1, 1, stride, 1).unwrap();
        let dw_want = values(
            &dw_want
                .transpose(0, 1)
                .unwrap()
                .narrow(2, 0, 3)
                .unwrap()
                .narrow(3, 0, 3)
                .unwrap(),
        );
        let (xv, wv, dyv) = (values(&x), values(&w), values(&dy));
        for isa in isas() {
            for offset in [0, 1, 4, 9, 15] {
                let place = |v: &[f32]| {
                    let mut buf = vec![0f32; v.len() + 32];
                    let start = (16 - misalignment(buf.as_ptr()) + offset) % 16;
                    buf[start..start + v.len()].copy_from_slice(v);
                    (buf, start)
                };
                let ((xb, xs), (db, ds)) = (place(&xv), place(&dyv));
                let (xs, ds) = (&xb[xs..xs + xv.len()], &db[ds..ds + dyv.len()]);
                let case = format!("{isa:?} stride {stride}, offset {offset}");
                assert_close(
                    &format!("y {case}"),
                    &forward(&g, isa, xs, &wv, None, None, false),
                    &y_want,
                );
                assert_close(&format!("dx {case}"), &input_grad(&g, isa, ds, &wv, None), &dx_want);
                assert_close(&format!("dw {case}"), &weight_grad(&g, isa, xs, ds), &dw_want);
            }
        }
    }
}

#[test]
fn bias_and_relu_are_applied_as_values_are_stored_on_every_path() {
    let dev = Device::Cpu;
    for isa in isas() {
        for (x_shape, cout, k, stride) in [
            ((2, 16, 8, 8), 16, 3, 1),
            ((1, 10, 7, 5), 24, 3, 2),
            ((2, 16, 8, 8), 32, 1, 2),
            ((2, 3, 5, 5), 10, 3, 1),
        ] {
            let (n, cin, h, w) = x_shape;
            let x = Tensor::randn(0f32, 1., x_shape, &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
            let g = ConvGeom::new(n, cin, cout, h, w, k, stride);
            let s = Tensor::randn(0f32, 1., (n, cout, g.ho, g.wo), &dev).unwrap();
            for (relu, add) in [(false, None), (true, None), (false, Some(&s)), (true, Some(&s))] {
                let mut want = conv2d_slow(&x, &wt, stride, k / 2)
                    .unwrap()
                    .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                    .unwrap();
                if let Some(s) = add {
                    want = (want + s).unwrap();
                }
                let want = if relu { want.relu().unwrap() } else { want };
                let op = BiasConvOp {
                    conv: ConvOp { g, isa },
                    bias: values(&bias),
                    relu,
                };
                let got = match add {
                    Some(s) => x.apply_op3_no_bwd(&wt, s, &op).unwrap(),
                    None => x.apply_op2_no_bwd(&wt, &op).unwrap(),
                };
                assert_eq!(got.dims(), want.dims());
                let case = format!(
                    "{isa:?} x {x_shape:?} → {cout}, {k}×{k} stride {stride} relu {relu} add {}",
                    add.is_some()
                );
                let (got, want) = (values(&got), values(&want));
                assert_close(&case, &got, &want);
                if relu {
                    assert!(got.contains(&0.0), "{case}: nothing clipped");
                }
            }
        }
    }
}

/// The input gradient with a tensor added as the kernel stores (a residual unit's input gets
/// its shortcut's gradient that way) is the plain input gradient plus the tensor, bit for bit.
#[test]
fn input_gradient_adds_a_tensor_as_it_stores_on_every_path() {
    let dev = Device::Cpu;
    for isa in isas() {
        for (x_shape, cout, k, stride) in [
            ((2, 16, 8, 8), 16, 3, 1), // rows of whole 8-pixel vectors
            ((2, 6, 5, 7), 10, 3, 1),
            ((1, 10, 7, 5), 24, 3, 2),
            ((2, 16, 8, 8), 32, 1, 2),
        ] {
            let (n, cin, h, w) = x_shape;
            let op = ConvOp {
                g: ConvGeom::new(n, cin, cout, h, w, k, stride),
                isa,
            };
            let dy = Tensor::randn(0f32, 1., op.out_dims(), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let s = Tensor::randn(0f32, 1., x_shape, &dev).unwrap();
            let got = dy.apply_op3_no_bwd(&wt, &s, &InputGradOp(op)).unwrap();
            let want = (dy.apply_op2_no_bwd(&wt, &InputGradOp(op)).unwrap() + &s).unwrap();
            let case = format!("{isa:?} x {x_shape:?} → {cout}, {k}×{k} stride {stride}");
            assert_eq!(values(&got), values(&want), "{case}");
        }
    }
}

/// The AVX2 path's Winograd F(2×2, 3×3) convolution (3×3 stride-1 forward passes, input and
/// weight gradients with enough channels) against the direct kernels, with the bias, added
/// values and ReLU it applies as it stores: equal up to rounding, and not bit-identical (so
/// the Winograd path did run). Shapes: several blocks of tile rows, output-channel counts that
/// leave 4, 3 and 2 channels for the last register tile, non-square planes; for the weight
/// gradient also channel counts that leave partial register tiles of both kinds, and batches
/// of several runs of images and several blocks per run.
#[cfg(target_arch = "x86_64")]
#[test]
fn winograd_matches_the_direct_kernel() {
    let isa = Isa::Avx2;
    if !supported_or_skip(isa) {
        return; // the Winograd path is AVX2-only
    }
    let dev = Device::Cpu;
    for (x_shape, cout) in [
        ((2, 32, 8, 8), 16),
        ((1, 24, 16, 24), 40),
        ((2, 64, 8, 16), 9),
        ((1, 20, 12, 8), 26),
        ((20, 32, 8, 8), 33),
        ((6, 64, 16, 16), 64),
    ] {
        let (n, cin, h, w) = x_shape;
        let g = ConvGeom::new(n, cin, cout, h, w, 3, 1);
        let t = |shape: (usize, usize, usize, usize)| values(&Tensor::randn(0f32, 1., shape, &dev).unwrap());
        let (x, s, dy, add_x) = (t(x_shape), t((n, cout, h, w)), t((n, cout, h, w)), t(x_shape));
        let wt = t((cout, cin, 3, 3));
        let bias = t((1, 1, 1, cout));
        let case = format!("x {x_shape:?} → {cout}");
        for (bias, add, relu) in [(None, None, false), (Some(&bias[..]), Some(&s[..]), true)] {
            let run = || forward(&g, isa, &x, &wt, bias, add, relu);
            let (got, want) = (run(), without_winograd(run));
            assert_close(&format!("y {case} bias/add/relu {}", relu), &got, &want);
            assert_ne!(got, want, "y {case}: the direct kernel ran");
        }
        for add in [None, Some(&add_x[..])] {
            let run = || input_grad(&g, isa, &dy, &wt, add);
            let (got, want) = (run(), without_winograd(run));
            assert_close(&format!("dx {case} add {}", add.is_some()), &got, &want);
            assert_ne!(got, want, "dx {case}: the direct kernel ran");
        }
        let run = || weight_grad(&g, isa, &x, &dy);
        let (got, want) = (run(), without_winograd(run));
        assert_close(&format!("dw {case}"), &got, &want);
        assert_ne!(got, want, "dw {case}: the direct kernel ran");
    }
}
