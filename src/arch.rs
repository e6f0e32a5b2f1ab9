//! The plugin API: what an architecture tells the runner about itself, and how it builds a model.
//!
//! A plugin lives in `plugins/` and is listed in `plugins/mod.rs`. It uses only this module and
//! [`crate::nn`], so it can later move into a crate of its own without changes.

use std::collections::BTreeMap;
use std::fmt;

use candle_core::Result;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// A trainable model: `forward_t(x, train)` maps a batch `(N, C, H, W)` to logits `(N, classes)`.
/// BatchNorm uses batch statistics (and updates its running statistics) when `train` is true,
/// and the running statistics otherwise.
pub type Model = Box<dyn candle_core::ModuleT + Send>;

/// The shape of one input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    pub const CIFAR: InputShape = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// The largest depth (in layers) and first-stage width (in filters) a plugin should let a grid
/// give: far beyond any trainable net (ResNet-1202 is 19.4M parameters; a dry run shows what a
/// million layers would need), and far from overflowing the sizes derived from them.
pub const MAX_DEPTH: i64 = 1_000_000;
pub const MAX_WIDTH: i64 = 1 << 16;

/// The type of a plugin parameter, with the values it allows.
#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    /// An integer from `min` to `max`. The bound keeps every size the plugin derives from it
    /// (channels × channels × taps, a count of layers) far from overflowing, so that an absurd
    /// value is an error at its line of the grid, never a panic. Further rules go in
    /// `Architecture::check`.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// A number in `min..=max` (a grid may write it as an integer: `dropout = 0`).
    Float {
        min: f64,
        max: f64,
    },
    /// One of a fixed list of strings.
    Choice(&'static [&'static str]),
}

/// A parameter value as written in a grid file.
///
/// Floats compare, order and hash by their bits' total order, so a value can be a map key and
/// part of a trial's identity; the grid refuses NaN and infinities before a value gets here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Value {
    /// Whether it is a number (a table right-aligns a column of numbers).
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::Float(_))
    }

    /// Variant rank, then value: the order of the derive this replaces, with floats in between.
    fn key(&self) -> (u8, i64, &str) {
        match self {
            Value::Bool(b) => (0, *b as i64, ""),
            Value::Int(i) => (1, *i, ""),
            Value::Float(f) => {
                // f64::total_cmp's key: flip the magnitude bits of negatives
                let bits = f.to_bits() as i64;
                (2, bits ^ ((((bits >> 63) as u64) >> 1) as i64), "")
            }
            Value::Str(s) => (3, 0, s),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"), // 0.0, not 0: a number, not a count
            Value::Str(s) => write!(f, "{s}"),
        }
    }
}

/// One parameter an architecture accepts.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub default: DefaultValue,
    pub doc: &'static str,
}

/// A parameter's default, as a constant (a `Value` holds a `String` and cannot be `const`).
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
}

impl DefaultValue {
    pub fn value(self) -> Value {
        match self {
            DefaultValue::Bool(b) => Value::Bool(b),
            DefaultValue::Int(i) => Value::Int(i),
            DefaultValue::Float(x) => Value::Float(x),
            DefaultValue::Str(s) => Value::Str(s.to_string()),
        }
    }
}

impl ParamSpec {
    /// A short description of the values this parameter allows, for help and error messages.
    pub fn allowed(&self) -> String {
        match self.kind {
            ParamKind::Int { min, max } => format!("an integer from {min} to {max}"),
            ParamKind::Bool => "true or false".to_string(),
            ParamKind::Float { min, max } => format!("a number from {min} to {max}"),
            ParamKind::Choice(c) => c.join(", "),
        }
    }

    /// `v` in this parameter's canonical form: a float parameter written as an integer
    /// (`dropout = 0`) becomes a float, so that `0` and `0.0` are the same trial.
    pub fn normalize(&self, v: Value) -> Value {
        match (self.kind, v) {
            (ParamKind::Float { .. }, Value::Int(i)) => Value::Float(i as f64),
            (_, v) => v,
        }
    }

    /// Reads a value written on a command line (`20`, `true`, `B`) as this parameter's type,
    /// and checks it like [`ParamSpec::check`].
    pub fn parse(&self, text: &str) -> std::result::Result<Value, String> {
        let invalid = || {
            format!(
                "invalid value `{text}` for parameter `{}`: expected {}",
                self.name,
                self.allowed()
            )
        };
        let v = match self.kind {
            ParamKind::Int { .. } => Value::Int(text.trim().parse().map_err(|_| invalid())?),
            ParamKind::Bool => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(invalid()),
            },
            ParamKind::Float { .. } => match text.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Value::Float(x),
                _ => return Err(invalid()),
            },
            ParamKind::Choice(_) => Value::Str(text.trim().to_string()),
        };
        self.check(&v)?;
        Ok(v)
    }

    /// Checks that `v` has this parameter's type and is one of its allowed values.
    pub fn check(&self, v: &Value) -> std::result::Result<(), String> {
        match (self.kind, v) {
            (ParamKind::Int { min, max }, Value::Int(i)) if (min..=max).contains(i) => Ok(()),
            (ParamKind::Bool, Value::Bool(_)) => Ok(()),
            (ParamKind::Float { min, max }, Value::Float(x)) if (min..=max).contains(x) => Ok(()),
            (ParamKind::Choice(c), Value::Str(s)) if c.contains(&s.as_str()) => Ok(()),
            _ => Err(format!(
                "invalid value {v} for parameter `{}`: expected {}",
                self.name,
                self.allowed()
            )),
        }
    }
}

/// The resolved parameters of one trial: every parameter the architecture declares, with the
/// defaults filled in. Kept sorted so that its JSON is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Params(pub BTreeMap<String, Value>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn int(&self, name: &str) -> Result<i64> {
        match self.0.get(name) {
            Some(Value::Int(i)) => Ok(*i),
            other => candle_core::bail!("parameter `{name}` should be an integer, got {other:?}"),
        }
    }

    pub fn usize(&self, name: &str) -> Result<usize> {
        let i = self.int(name)?;
        usize::try_from(i).map_err(|_| candle_core::Error::Msg(format!("parameter `{name}` must be ≥ 0, got {i}")))
    }

    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.0.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            other => candle_core::bail!("parameter `{name}` should be true or false, got {other:?}"),
        }
    }

    pub fn float(&self, name: &str) -> Result<f64> {
        match self.0.get(name) {
            Some(Value::Float(x)) => Ok(*x),
            other => candle_core::bail!("parameter `{name}` should be a number, got {other:?}"),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        match self.0.get(name) {
            Some(Value::Str(s)) => Ok(s),
            other => candle_core::bail!("parameter `{name}` should be a string, got {other:?}"),
        }
    }
}

/// An architecture plugin.
pub trait Architecture: Send + Sync {
    /// The name used in grid files (`arch = "resnet"`).
    fn name(&self) -> &'static str;
    /// One line, citing the paper it follows.
    fn summary(&self) -> &'static str;
    /// Every parameter it accepts.
    fn params(&self) -> &'static [ParamSpec];
    /// Rules that involve a parameter's value beyond its type (ResNet depth must be 6n+2), or
    /// several parameters together. The error names the parameter at fault and says which
    /// values are valid.
    fn check(&self, _p: &Params) -> std::result::Result<(), ParamError> {
        Ok(())
    }
    /// Builds the model, creating its tensors through `vb` under PyTorch state-dict names.
    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model>;
}

/// A parameter value that an architecture refuses: which parameter, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        ParamError {
            param: param.to_string(),
            message: message.into(),
        }
    }
}

/// A refused parameter inside `Architecture::build`, which speaks Candle's error type.
impl From<ParamError> for candle_core::Error {
    fn from(e: ParamError) -> Self {
        candle_core::Error::Msg(format!("parameter `{}`: {}", e.param, e.message))
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Fills in the defaults of `arch`'s parameters and checks every value.
pub fn resolve(arch: &dyn Architecture, given: &BTreeMap<String, Value>) -> std::result::Result<Params, ParamError> {
    let specs = arch.params();
    if let Some(unknown) = given.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
        return Err(ParamError::new(
            unknown,
            format!(
                "`{}` has no parameter `{unknown}`; its parameters are: {}",
                arch.name(),
                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for spec in specs {
        let v = spec.normalize(given.get(spec.name).cloned().unwrap_or_else(|| spec.default.value()));
        spec.check(&v).map_err(|m| ParamError::new(spec.name, m))?;
        out.insert(spec.name.to_string(), v);
    }
    let params = Params(out);
    arch.check(&params)?;
    Ok(params)
}

/// n, the units per stage, of a net whose `depth` parameter is `step`·n + `fixed` weighted
/// layers (CIFAR ResNets: 6n+2, their bottleneck nets 9n+2, Wide ResNets 6n+4); the error, at
/// `depth`, lists valid depths.
pub fn units_per_stage(p: &Params, step: i64, fixed: i64, what: &str) -> std::result::Result<usize, ParamError> {
    let depth = p.int("depth").map_err(|e| ParamError::new("depth", e.to_string()))?;
    if depth >= step + fixed && (depth - fixed) % step == 0 {
        return usize::try_from((depth - fixed) / step).map_err(|e| ParamError::new("depth", e.to_string()));
    }
    let examples: Vec<String> = (1..=6).map(|n| (step * n + fixed).to_string()).collect();
    Err(ParamError::new(
        "depth",
        format!(
            "depth {depth} is not valid for {what}: it must be {step}n+{fixed} ({}, …)",
            examples.join(", ")
        ),
    ))
}

/// What a model costs: trainable parameters, forward MFLOPs per image (multiply-adds × 2 /
/// 10⁶), and what one image's training forward pass keeps for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub params: usize,
    pub mflops: f64,
    pub footprint: crate::nn::trace::Footprint,
}

/// Measures a model's [`Cost`] from its shapes alone: built on a [`crate::nn::ShapeStore`]
/// and run as a [`crate::nn::trace`] on one placeholder image, so a net of any depth costs
/// milliseconds and a few bytes per layer, never its weights' memory.
pub fn cost(arch: &dyn Architecture, p: &Params, input: InputShape, classes: usize) -> Result<Cost> {
    let store = crate::nn::ShapeStore::new();
    let model = arch.build(p, input, classes, store.var_builder())?;
    let x = crate::nn::trace::placeholder((1, input.channels, input.height, input.width))?;
    let ((y, footprint), macs) = crate::nn::flops::count(|| crate::nn::trace::footprint(|| model.forward_t(&x, true)));
    let y = y?;
    if y.dims() != [1, classes] {
        candle_core::bail!(
            "{} produced logits of shape {:?}, expected [1, {classes}]",
            arch.name(),
            y.dims()
        );
    }
    let params = store.trainable_count()?;
    Ok(Cost {
        params: usize::try_from(params).map_err(|e| candle_core::Error::Msg(format!("{params} parameters: {e}")))?,
        mflops: macs as f64 * 2.0 / 1e6,
        footprint,
    })
}

impl fmt::Debug for dyn Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Architecture({})", self.name())
    }
}
