//! What every op here shares: the per-thread switch to Candle's own composed ops
//! ([`reference_ops`]) and reading a CPU tensor's f32 values as a custom op receives them
//! ([`f32_data`]).

thread_local! {
    static REFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets [`reference_ops`] for this thread (see `nn::use_reference_ops`).
pub fn set_reference_ops(on: bool) {
    REFERENCE.with(|r| r.set(on));
}

/// Whether the ops built on this thread are to be Candle's own composed ops (the `*_slow`
/// functions) instead of ours.
pub fn reference_ops() -> bool {
    REFERENCE.with(|r| r.get())
}

/// The f32 values of a contiguous CPU tensor as a custom op receives it; `op` names the op in
/// the error otherwise.
pub fn f32_data<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        candle_core::CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: expected contiguous data"),
    }
}
