//! Test helpers for model code: a `VarBuilder` backend that records which tensors a model
//! reads, and zero-cost full-size tensors (a broadcast scalar) to build real-size layouts
//! without allocating them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Tensors by name; every `get` is recorded in `used` (names as the model asked for them).
pub struct Recording {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}: file has {:?}, model expects {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        self.used.lock().unwrap().insert(name.to_string());
        t.to_dtype(dtype)?.to_device(dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A `VarBuilder` over `tensors` and the set its reads are recorded in.
pub fn recording(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
) -> (VarBuilder<'static>, Arc<Mutex<BTreeSet<String>>>) {
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    let backend: Box<dyn SimpleBackend> = Box::new(Recording {
        tensors,
        used: used.clone(),
    });
    (VarBuilder::from_backend(backend, dtype, Device::Cpu), used)
}

/// A full-size tensor that costs one element: a broadcast scalar zero.
pub fn zero_cost(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros((), dtype, &Device::Cpu)
        .unwrap()
        .broadcast_as(shape)
        .unwrap()
}

/// Splits a layout into resident tensors (full names) and per-unit tensors (names relative to
/// the unit), by the family's own unit naming.
pub fn split_units(
    family: crate::family::Family,
    tensors: HashMap<String, Tensor>,
) -> (
    HashMap<String, Tensor>,
    std::collections::BTreeMap<String, HashMap<String, Tensor>>,
) {
    let mut resident = HashMap::new();
    let mut units: std::collections::BTreeMap<String, HashMap<String, Tensor>> = Default::default();
    for (name, t) in tensors {
        match family.unit_of(&name) {
            Some(unit) => {
                let rel = name[unit.len() + 1..].to_string();
                units.entry(unit).or_default().insert(rel, t);
            }
            None => {
                resident.insert(name, t);
            }
        }
    }
    (resident, units)
}

/// (max |a − b|, max |b|): the largest error and the reference's scale, in f32.
pub fn max_err_and_scale(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let max = |t: Tensor| {
        t.abs()
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_scalar::<f32>())
            .expect("test tensors reduce to a scalar")
    };
    (max((a - b).expect("same shapes")), max(b.clone()))
}
