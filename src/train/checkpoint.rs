//! Checkpoint bytes: what the store keeps in its `checkpoints` table, as safetensors.
//!
//! - `best`: the model's tensors (weights and BN running statistics) under their PyTorch
//!   state-dict names and nothing else, so `runner export` can hand the bytes to
//!   `safetensors.torch.load_file` as they are.
//! - `last`: everything a resumed run needs to continue as if it had never stopped: the model's
//!   tensors (`model.<name>`), SGD momentum (`momentum.<name>`), and the loop's position and
//!   accumulators in the metadata. Data order and augmentation are functions of (seed, step),
//!   so no RNG state is needed beyond the step.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

const FORMAT: &str = "runner-last/1";

/// The training loop's state at a step, besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopState {
    /// Steps completed: the next step to run.
    pub step: u64,
    pub warming_up: bool,
    pub best_val_error: Option<f64>,
    pub best_step: Option<u64>,
    /// Training loss and error accumulated since the last evaluation.
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    /// Training time of earlier attempts, so a resumed trial reports its whole wall time.
    pub wall_s: f64,
}

/// A decoded `last` checkpoint.
pub struct Last {
    pub state: LoopState,
    pub model: BTreeMap<String, Tensor>,
    pub momentum: Vec<(String, Tensor)>,
}

fn encode(tensors: Vec<(String, Tensor)>, meta: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    // Safetensors wants contiguous host data; the copies are small next to a training step.
    let host = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(host, meta).map_err(|e| Error::Other(format!("writing a checkpoint: {e}")))
}

/// Bytes of a `best` checkpoint.
pub fn encode_best(model: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    encode(model.iter().map(|(n, t)| (n.clone(), t.clone())).collect(), None)
}

/// Reads a `best` checkpoint (or any safetensors file of model tensors).
pub fn decode_best(bytes: &[u8], device: &Device) -> Result<BTreeMap<String, Tensor>> {
    Ok(candle_core::safetensors::load_buffer(bytes, device)?
        .into_iter()
        .collect())
}

/// Bytes of a `last` checkpoint.
pub fn encode_last(
    state: &LoopState,
    model: &BTreeMap<String, Tensor>,
    momentum: &[(String, Tensor)],
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = model.iter().map(|(n, t)| (format!("model.{n}"), t.clone())).collect();
    tensors.extend(momentum.iter().map(|(n, t)| (format!("momentum.{n}"), t.clone())));
    // Floats are stored as their bits so a resumed run continues from exactly the same sums.
    let bits = |x: f64| format!("{:016x}", x.to_bits());
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".into(), state.step.to_string()),
        ("warming_up".into(), state.warming_up.to_string()),
        ("loss_sum".into(), bits(state.loss_sum)),
        ("correct".into(), state.correct.to_string()),
        ("seen".into(), state.seen.to_string()),
        ("wall_s".into(), bits(state.wall_s)),
    ]);
    if let (Some(e), Some(s)) = (state.best_val_error, state.best_step) {
        meta.insert("best_val_error".into(), bits(e));
        meta.insert("best_step".into(), s.to_string());
    }
    encode(tensors, Some(meta))
}

/// Reads a `last` checkpoint written by [`encode_last`].
pub fn decode_last(bytes: &[u8], device: &Device) -> Result<Last> {
    let bad = |what: &str| Error::Other(format!("the resumable checkpoint is unreadable: {what}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(&format!("not a `{FORMAT}` checkpoint")));
    }
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(&format!("no `{k}` entry")));
    let int = |k: &str| {
        get(k)?
            .parse::<u64>()
            .map_err(|_| bad(&format!("`{k}` is not a count")))
    };
    let float = |k: &str| {
        u64::from_str_radix(get(k)?, 16)
            .map(f64::from_bits)
            .map_err(|_| bad(&format!("`{k}` is not a number")))
    };
    let best = match meta.contains_key("best_step") {
        true => (Some(float("best_val_error")?), Some(int("best_step")?)),
        false => (None, None),
    };
    let state = LoopState {
        step: int("step")?,
        warming_up: get("warming_up")? == "true",
        best_val_error: best.0,
        best_step: best.1,
        loss_sum: float("loss_sum")?,
        correct: int("correct")?,
        seen: int("seen")?,
        wall_s: float("wall_s")?,
    };
    let mut model = BTreeMap::new();
    let mut momentum = Vec::new();
    for (name, t) in candle_core::safetensors::load_buffer(bytes, device)? {
        if let Some(n) = name.strip_prefix("model.") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("momentum.") {
            momentum.push((n.to_string(), t));
        } else {
            return Err(bad(&format!("unexpected tensor `{name}`")));
        }
    }
    momentum.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Last { state, model, momentum })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> BTreeMap<String, Tensor> {
        let d = Device::Cpu;
        BTreeMap::from([
            (
                "conv1.weight".to_string(),
                Tensor::new(&[[1.5f32, -2.0], [0.1, 3.0]], &d).unwrap(),
            ),
            ("bn1.running_var".to_string(), Tensor::new(&[0.25f32, 4.0], &d).unwrap()),
        ])
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn last_round_trips_tensors_and_exact_state() {
        let state = LoopState {
            step: 1234,
            warming_up: true,
            best_val_error: Some(0.1 + 0.2),
            best_step: Some(800),
            loss_sum: 1.0 / 3.0,
            correct: 77,
            seen: 128,
            wall_s: 12.5,
        };
        let model = tensors();
        let momentum = vec![(
            "conv1.weight".to_string(),
            Tensor::new(&[[0.5f32, 0.0], [1.0, -1.0]], &Device::Cpu).unwrap(),
        )];
        let bytes = encode_last(&state, &model, &momentum).unwrap();
        let back = decode_last(&bytes, &Device::Cpu).unwrap();
        assert_eq!(back.state, state);
        assert_eq!(back.model.keys().collect::<Vec<_>>(), model.keys().collect::<Vec<_>>());
        for (n, t) in &model {
            assert_eq!(values(&back.model[n]), values(t), "{n}");
        }
        assert_eq!(back.momentum.len(), 1);
        assert_eq!(values(&back.momentum[0].1), vec![0.5, 0.0, 1.0, -1.0]);
    }

    #[test]
    fn best_has_exactly_the_model_names() {
        let bytes = encode_best(&tensors()).unwrap();
        let back = decode_best(&bytes, &Device::Cpu).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), vec!["bn1.running_var", "conv1.weight"]);
        assert_eq!(back["conv1.weight"].dims(), &[2, 2]);
        // A best checkpoint is not a resumable one.
        assert!(decode_last(&bytes, &Device::Cpu).is_err());
    }
}
