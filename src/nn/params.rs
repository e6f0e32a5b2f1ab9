//! Where a model's tensors live: a named store with seeded, reproducible initialisation.
//!
//! Candle's `VarMap` draws initial values from an unseeded generator; a runner that promises
//! identical metrics for identical seeds cannot use that. [`ParamStore`] is a `VarBuilder`
//! backend that draws each tensor from a stream derived from the seed and the tensor's name, so
//! the values do not depend on construction order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use crate::rng::Rng;

/// Names of tensors that are state, not trainable parameters (BatchNorm running statistics).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

#[derive(Clone)]
pub struct ParamStore {
    seed: u64,
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        ParamStore {
            seed,
            vars: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A `VarBuilder` that creates tensors in this store.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        // A panic while holding this lock cannot leave the map half-updated (inserts are
        // single calls), so a poisoned lock is still safe to use.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every tensor, by name (sorted).
    pub fn all(&self) -> Vec<(String, Var)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The trainable parameters, by name (sorted): everything but the buffers.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A snapshot of every tensor (for a checkpoint).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.lock()
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Overwrites every tensor from `tensors`, which must hold exactly this store's names and shapes.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let vars = self.lock();
        for (name, var) in vars.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no tensor `{name}`")))?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "checkpoint tensor `{name}` has shape {:?}, the model {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        if let Some(extra) = tensors.keys().find(|k| !vars.contains_key(*k)) {
            candle_core::bail!("checkpoint has a tensor `{extra}` that the model does not");
        }
        Ok(())
    }

    fn init(&self, shape: &Shape, name: &str, init: Init, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = Rng::derive(self.seed, name, 0);
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * rng.uniform()) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let dims = shape.dims();
                let receptive: usize = dims.iter().skip(2).product();
                let fan_n = match fan {
                    FanInOut::FanIn => dims.get(1).copied().unwrap_or(1) * receptive,
                    FanInOut::FanOut => dims.first().copied().unwrap_or(1) * receptive,
                };
                let std = non_linearity.gain() / (fan_n.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n).map(|_| (bound * (2.0 * rng.uniform() - 1.0)) as f32).collect()
                    }
                }
            }
        };
        Tensor::from_vec(data, shape.clone(), dev)
    }
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.lock();
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "tensor `{name}` requested with shape {s:?}, exists with {:?}",
                    v.shape()
                );
            }
            return v.as_tensor().to_dtype(dtype);
        }
        let var = Var::from_tensor(&self.init(&s, name, h, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no tensor named `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

/// A `VarBuilder` backend that records the shapes a model asks for and hands out
/// [`super::trace::placeholder`]s, so that a model of any size is built without its storage:
/// what [`crate::arch::cost`] counts parameters with.
#[derive(Clone, Default)]
pub struct ShapeStore {
    /// Each tensor's element count, by name.
    sizes: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ShapeStore {
    pub fn new() -> Self {
        ShapeStore::default()
    }

    /// A `VarBuilder` over this store, on the CPU.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of trainable scalars; an error where it does not fit in 64 bits.
    pub fn trainable_count(&self) -> Result<u64> {
        self.lock()
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .try_fold(0u64, |a, (_, &n)| a.checked_add(n))
            .ok_or_else(|| candle_core::Error::Msg("the model has more than 2^64 parameters".into()))
    }
}

impl candle_nn::var_builder::SimpleBackend for ShapeStore {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, _: &Device) -> Result<Tensor> {
        let n = s
            .dims()
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{name}` of shape {s:?} is too large to count")))?;
        self.lock().insert(name.to_string(), n);
        super::trace::placeholder(s)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("tensor `{name}` has no shape in a shape-only store")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_regardless_of_order() -> Result<()> {
        let dev = Device::Cpu;
        let a = ParamStore::new(5);
        let b = ParamStore::new(5);
        let va = a.var_builder(&dev);
        let vb = b.var_builder(&dev);
        let x1 = va.get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let _y1 = va.get_with_hints(7, "y", Init::Randn { mean: 0., stdev: 1. })?;
        let _y2 = vb.get_with_hints(7, "y", Init::Randn { mean: 0., stdev: 1. })?;
        let x2 = vb.get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        let c = ParamStore::new(6);
        let x3 = c
            .var_builder(&dev)
            .get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        assert_ne!(x1.to_vec2::<f32>()?, x3.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn buffers_are_not_trainable() -> Result<()> {
        let s = ParamStore::new(0);
        let vb = s.var_builder(&Device::Cpu);
        vb.get_with_hints(3, "bn.weight", Init::Const(1.))?;
        vb.get_with_hints(3, "bn.running_mean", Init::Const(0.))?;
        assert_eq!(s.trainable_count(), 3);
        assert_eq!(s.all().len(), 2);
        Ok(())
    }
}
