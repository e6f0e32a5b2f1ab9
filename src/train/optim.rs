//! SGD with momentum, L2 weight decay and optional Nesterov momentum, with PyTorch's update
//! rule (Candle's own SGD has no momentum):
//!
//! ```text
//! d = g + wd·p;  b = μ·b + d (b = d on the first step);  d = nesterov ? d + μ·b : b;  p -= lr·d
//! ```

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use super::config::OptimizerConfig;

pub struct Sgd {
    params: Vec<(String, Var)>,
    /// Momentum buffers, by parameter; `None` until the parameter's first step.
    buffers: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimizerConfig) -> Sgd {
        let OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            nesterov,
            ..
        } = *cfg;
        let buffers = vec![None; params.len()];
        Sgd {
            params,
            buffers,
            momentum,
            weight_decay,
            nesterov,
        }
    }

    /// One update with the gradients of the last backward pass. Parameters without a
    /// gradient are left alone (their momentum too), as PyTorch does.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for ((_, var), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor().detach();
            let mut d = g.detach();
            if self.weight_decay != 0.0 {
                d = (d + (&p * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => d.clone(),
                    Some(b) => ((b * self.momentum)? + &d)?,
                };
                d = if self.nesterov {
                    (d + (&b * self.momentum)?)?
                } else {
                    b.clone()
                };
                *buf = Some(b);
            }
            var.set(&(p - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers by parameter name, for a resumable checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        for ((name, var), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            *buf = match state.iter().find(|(n, _)| n == name) {
                Some((_, t)) if t.dims() == var.dims() => Some(t.clone()),
                Some((_, t)) => candle_core::bail!(
                    "momentum for `{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                ),
                None => None,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimises (p − 3)² / 2 (gradient p − 3) from p = 1, and compares with the rule by hand.
    fn run(nesterov: bool) -> Vec<f64> {
        let var = Var::new(&[1f32], &Device::Cpu).unwrap();
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov,
        };
        let mut opt = Sgd::new(vec![("p".into(), var.clone())], &cfg);
        let mut out = Vec::new();
        for _ in 0..3 {
            let loss = ((var.as_tensor() - 3.0).unwrap().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
            out.push(var.as_tensor().to_vec1::<f32>().unwrap()[0] as f64);
        }
        out
    }

    fn by_hand(nesterov: bool) -> Vec<f64> {
        let (mut p, mut b, mut out) = (1f64, None::<f64>, Vec::new());
        for _ in 0..3 {
            let d = (p - 3.0) + 0.01 * p;
            let nb = match b {
                None => d,
                Some(b) => 0.9 * b + d,
            };
            b = Some(nb);
            p -= 0.1 * if nesterov { d + 0.9 * nb } else { nb };
            out.push(p);
        }
        out
    }

    #[test]
    fn matches_the_pytorch_rule_with_and_without_nesterov() {
        for nesterov in [false, true] {
            let (a, b) = (run(nesterov), by_hand(nesterov));
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "nesterov={nesterov}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let var = Var::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let cfg = OptimizerConfig::default();
        let mut opt = Sgd::new(vec![("p".into(), var.clone())], &cfg);
        assert!(opt.state().is_empty());
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        let state = opt.state();
        let mut other = Sgd::new(vec![("p".into(), var.clone())], &cfg);
        other.load_state(&state).unwrap();
        assert_eq!(
            other.state()[0].1.to_vec1::<f32>().unwrap(),
            state[0].1.to_vec1::<f32>().unwrap()
        );
    }
}
