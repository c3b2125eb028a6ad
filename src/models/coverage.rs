//! Which tensors a model's constructors consumed: a `VarBuilder` backend over a name → tensor
//! map that checks every requested shape and records every name it hands out, so a caller can
//! list what a file has that the model never asked for (and the constructors report what it
//! lacks). Used by the layout tests and available to the executor's diagnostics.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// A shared record of the names a [`Coverage`] `VarBuilder` has handed out.
#[derive(Debug, Clone)]
pub struct Coverage {
    names: Arc<Vec<String>>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

struct Backend {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl Coverage {
    /// A `VarBuilder` of `dtype` on `device` over `tensors`, and the record of its use.
    /// Tensors are converted to `dtype` when requested (a no-op when they already have it).
    pub fn var_builder(
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> (VarBuilder<'static>, Coverage) {
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        let used = Arc::new(Mutex::new(BTreeSet::new()));
        let cov = Coverage {
            names: Arc::new(names),
            used: used.clone(),
        };
        (
            VarBuilder::from_backend(Box::new(Backend { tensors, used }), dtype, device.clone()),
            cov,
        )
    }

    /// Names present in the map and never requested, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.names
            .iter()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect()
    }

    /// Names requested at least once, sorted.
    pub fn used(&self) -> Vec<String> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            bail!(
                "tensor `{name}` has shape {:?}, the model expects {:?}",
                t.dims(),
                s.dims()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            bail!("tensor `{name}` is missing")
        };
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
