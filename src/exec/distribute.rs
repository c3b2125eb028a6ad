//! Distribute: every placement unit of a loaded model to its home, and the streaming
//! engines that bring the non-resident ones to the compute device.
//!
//! Homes ([`UnitHome`], from the plan's `home` per unit):
//! - [`UnitHome::Compute`]: materialised once on the compute device in the compute dtype
//!   (`Home::Resident`);
//! - [`UnitHome::Host`]: the unit's stored bytes in host memory (owned; page-locked by the
//!   CUDA backend), fetched into a slot at every use;
//! - [`UnitHome::Disk`]: left in the memory map of the weight file when the bytes used are
//!   the bytes stored. A tensor that was patched, assembled or converted at load is written
//!   once to a *spill file* in the cache folder and that file is mapped instead: `disk` never
//!   silently means RAM. Spill files are unnamed temporary files (`O_TMPFILE` / unlinked at
//!   creation), so nothing is left behind when the process ends, even after `kill -9`; they
//!   are synced before mapping, so their pages are clean and the kernel may drop them;
//! - [`UnitHome::Donor`]: device memory of another GPU (CUDA builds), peer-copied per use.
//!
//! Units are processed one at a time (load → patch → home), so a model whose blocks stream
//! from disk never holds more than one unit's patched bytes in RAM. The bytes each device
//! holds are summed from what was actually allocated ([`Distributed::held`]).
//!
//! Backends are created in one place, `make_backend`: the CPU backend, or on CUDA builds
//! `exec::cuda::CudaBackend` when the compute device is a GPU.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor};

use super::cpu::CpuBackend;
use super::engine::{Backend, Engine, EngineUnit, Home};
use super::load::{LoadError, ModelFile, Origin};
use super::phase::{Phase, Phases};
use super::unit::{Bytes, HostTensor, UnitData};
use crate::device::DeviceName;
pub use crate::device::UnitHome;

/// The compute side of a model: device, its name, the compute dtype.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: DeviceName,
    pub device: Device,
    pub dtype: CDType,
}

/// The compute device `name` (`cpu`, or `cuda:N` on CUDA builds).
pub fn compute_device(name: DeviceName) -> Result<Device, String> {
    match name {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Disk => Err("`disk` stores weights; it cannot compute".into()),
        DeviceName::Cuda(i) => cuda_device(i),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(i: u32) -> Result<Device, String> {
    super::cuda::sass::link();
    let d = Device::new_cuda_with_stream(i as usize)
        .map_err(|e| format!("cannot open cuda:{i}: {e}"))?;
    super::cuda::keep_pool_memory(&d).map_err(|e| format!("cuda:{i}: {e}"))?;
    Ok(d)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(i: u32) -> Result<Device, String> {
    Err(format!(
        "compute = \"cuda:{i}\": this mgpu was built without CUDA (build it with `--features cuda`, see docs/gpu.md), or compute on `cpu`"
    ))
}

/// One unit to distribute: its name, home, and tensors (canonical name, name in the unit).
#[derive(Debug, Clone)]
pub struct UnitSpec {
    pub name: String,
    pub home: UnitHome,
    pub tensors: Vec<(String, String)>,
}

/// A model after distribution.
pub struct Distributed {
    /// The resident unit's tensors on the compute device, by full canonical name.
    pub resident: HashMap<String, Tensor>,
    /// One engine per group of units (a cyclic execution order), in the order given.
    pub engines: Vec<Engine<Box<dyn Backend>>>,
    /// Bytes of weights held per device, as allocated: tensors on the compute device (in the
    /// compute dtype), host copies, ranges of mapped files, donor copies.
    pub held: BTreeMap<DeviceName, u64>,
    /// Bytes of prefetch slots (all engines).
    pub slot_bytes: u64,
    /// Bytes written to spill files (part of `held[disk]`).
    pub spilled: u64,
    /// Units per home, for the log.
    pub homes: BTreeMap<UnitHome, usize>,
    /// Where the time went (convert, patch, upload, pin, spill, read).
    pub phases: Phases,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("held", &self.held)
            .field("slot_bytes", &self.slot_bytes)
            .field("spilled", &self.spilled)
            .finish_non_exhaustive()
    }
}

/// Bytes of a materialised tensor.
fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Bytes a unit occupies once materialised in `dtype` (floats converted, integers kept).
fn materialized_bytes(data: &UnitData, dtype: CDType) -> u64 {
    data.tensors
        .iter()
        .map(|t| {
            let n: usize = t.shape.iter().product();
            let size = if t.dtype.is_float() {
                dtype.size_in_bytes()
            } else {
                t.dtype.size_in_bytes()
            };
            (n * size) as u64
        })
        .sum()
}

/// Loads, patches and distributes a model: the `resident` tensors (canonical name, name) on
/// the compute device, then every unit of every group to its home; one engine per group
/// with `slots` prefetch slots. Spill files go to `cache_dir`.
pub fn distribute(
    mf: &mut ModelFile,
    resident: &[(String, String)],
    groups: &[Vec<UnitSpec>],
    target: &Target,
    slots: usize,
    cache_dir: &Path,
) -> Result<Distributed, LoadError> {
    let model = mf.model.clone();
    let other = |message: String| LoadError::Other {
        model: model.clone(),
        message,
    };
    let mut held: BTreeMap<DeviceName, u64> = BTreeMap::new();
    let mut homes: BTreeMap<UnitHome, usize> = BTreeMap::new();
    let mut spilled = 0u64;
    let mut phases = Phases::default();
    // The resident rest: materialised once.
    let mut resident_tensors = HashMap::with_capacity(resident.len());
    for (canonical, rel) in resident {
        let t = timed_tensor(mf, canonical, rel, &mut phases)?;
        let t0 = Instant::now();
        let m = t
            .materialize(&target.device, target.dtype)
            .map_err(|e| other(format!("placing `{canonical}` on {}: {e}", target.name)))?;
        phases.since(Phase::Upload, t0, tensor_bytes(&m));
        *held.entry(target.name).or_default() += tensor_bytes(&m);
        resident_tensors.insert(rel.clone(), m);
    }
    let mut engines = Vec::with_capacity(groups.len());
    let mut slot_bytes = 0u64;
    for group in groups {
        let mut units = Vec::with_capacity(group.len());
        for spec in group {
            let mut data = UnitData {
                name: spec.name.clone(),
                tensors: Vec::with_capacity(spec.tensors.len()),
            };
            for (canonical, rel) in &spec.tensors {
                data.tensors
                    .push(timed_tensor(mf, canonical, rel, &mut phases)?);
            }
            *homes.entry(spec.home).or_default() += 1;
            units.push(PlacedUnit {
                name: spec.name.clone(),
                home: spec.home,
                data: UnitSource::Host(data),
            });
        }
        // One pool per engine: the pool reuses buffers by unit name, and two models may have
        // units of the same name.
        let built =
            build_engine(units, target, slots, cache_dir, &mut Pools::default()).map_err(other)?;
        for (d, b) in built.held {
            *held.entry(d).or_default() += b;
        }
        slot_bytes += built.slot_bytes;
        spilled += built.spilled;
        phases.merge(&built.phases);
        engines.push(built.engine);
    }
    Ok(Distributed {
        resident: resident_tensors,
        engines,
        held,
        slot_bytes,
        spilled,
        homes,
        phases,
    })
}

/// `mf.tensor`, its time counted by what it did: patched (LoRA), converted or assembled
/// (convert, with the bytes produced), or handed out as stored (read: a range of the map, so
/// no bytes are counted — they are read where they are copied, under pin or upload).
fn timed_tensor(
    mf: &mut ModelFile,
    canonical: &str,
    rel: &str,
    phases: &mut Phases,
) -> Result<HostTensor, LoadError> {
    let t0 = Instant::now();
    let (t, origin) = mf.tensor(canonical, rel)?;
    let (phase, bytes) = match origin {
        Origin::Patched => (Phase::Patch, t.bytes.len() as u64),
        Origin::Converted | Origin::Assembled => (Phase::Convert, t.bytes.len() as u64),
        Origin::AsStored => (Phase::Read, 0),
    };
    phases.since(phase, t0, bytes);
    Ok(t)
}

/// A unit's bytes as the caller has them.
pub enum UnitSource {
    /// Stored bytes on the host (owned or mapped): materialised on the compute device when
    /// the home is the compute device, otherwise homed as they are.
    Host(UnitData),
    /// Already on the compute device in the compute dtype (generated weights of the
    /// benchmark): only a `Compute` home can take them.
    Device(HashMap<String, Tensor>),
}

/// One unit to give a home to.
pub struct PlacedUnit {
    pub name: String,
    pub home: UnitHome,
    pub data: UnitSource,
}

/// What backends keep across engines: on CUDA builds the page-locked copies of host-homed
/// units, by unit name (pinning costs seconds per GiB). A run uses one per engine; the
/// benchmark one for all its placements of the same weights.
#[derive(Default)]
pub struct Pools {
    #[cfg(feature = "cuda")]
    pinned: super::cuda::PinnedPool,
}

/// An engine and what its units hold.
pub struct BuiltEngine {
    pub engine: Engine<Box<dyn Backend>>,
    /// Bytes of weights per device (compute-device tensors in the compute dtype, host and
    /// donor copies, mapped ranges).
    pub held: BTreeMap<DeviceName, u64>,
    /// Bytes of its prefetch slots.
    pub slot_bytes: u64,
    /// Bytes written to spill files (disk homes of patched or converted tensors).
    pub spilled: u64,
    /// Where the time went (upload, read, spill, pin).
    pub phases: Phases,
}

/// Homes every unit of one cyclic execution order and builds the streaming engine over them
/// with `slots` prefetch slots (none when nothing streams): `Compute` units are materialised
/// on the compute device, host units are kept as owned bytes (the CUDA backend pins them),
/// disk units stay mapped (owned bytes are spilled to a file in `cache_dir` first), donor
/// units are uploaded by the CUDA backend. The one place where units get homes, for
/// `mgpu run` and `mgpu bench` alike.
pub fn build_engine(
    units: Vec<PlacedUnit>,
    target: &Target,
    slots: usize,
    cache_dir: &Path,
    pools: &mut Pools,
) -> Result<BuiltEngine, String> {
    let mut held: BTreeMap<DeviceName, u64> = BTreeMap::new();
    let mut spilled = 0u64;
    let mut phases = Phases::default();
    let mut host_bytes = 0u64;
    let mut engine_units = Vec::with_capacity(units.len());
    let mut links: Vec<(String, UnitHome)> = Vec::new();
    let mut largest = 0u64;
    for unit in units {
        let home = match (unit.home, unit.data) {
            (UnitHome::Compute, UnitSource::Device(m)) => {
                *held.entry(target.name).or_default() += m.values().map(tensor_bytes).sum::<u64>();
                Home::Resident(Arc::new(m))
            }
            (UnitHome::Compute, UnitSource::Host(data)) => {
                let t0 = Instant::now();
                let m = data
                    .materialize(&target.device, target.dtype)
                    .map_err(|e| format!("placing `{}` on {}: {e}", unit.name, target.name))?;
                let bytes = m.values().map(tensor_bytes).sum::<u64>();
                phases.since(Phase::Upload, t0, bytes);
                *held.entry(target.name).or_default() += bytes;
                Home::Resident(Arc::new(m))
            }
            (streamed, UnitSource::Device(_)) => {
                return Err(format!(
                "unit `{}` is on the compute device but homed on {streamed} (a bug in the caller)",
                unit.name
            ))
            }
            (streamed, UnitSource::Host(data)) => {
                let data = match streamed {
                    // On a CPU compute device, host homes are owned copies; the CUDA
                    // backend copies host homes into page-locked memory itself.
                    UnitHome::Host if !target.device.is_cuda() => {
                        phases.time(Phase::Read, data.bytes(), || data.to_owned_data())
                    }
                    UnitHome::Disk => {
                        let t0 = Instant::now();
                        let (d, n) = spill(data, cache_dir)
                            .map_err(|e| format!("unit `{}`: {e}", unit.name))?;
                        phases.since(Phase::Spill, t0, n);
                        spilled += n;
                        d
                    }
                    UnitHome::Donor(n) if !target.device.is_cuda() => {
                        return Err(format!(
                            "unit `{}` is homed on donor cuda:{n}, which needs a CUDA compute device (this model computes on {})",
                            unit.name, target.name
                        ))
                    }
                    _ => data,
                };
                *held.entry(streamed.device(target.name)).or_default() += data.bytes();
                // `on_dequant` LoRA factors stay with the compute device (uploaded once).
                let factors = data.lora_bytes();
                if factors > 0 {
                    *held.entry(target.name).or_default() += factors;
                }
                if streamed != UnitHome::Disk {
                    host_bytes += data.bytes();
                }
                largest = largest.max(materialized_bytes(&data, target.dtype));
                let link = match links.iter().position(|(_, h)| *h == streamed) {
                    Some(i) => i,
                    None => {
                        let from = streamed.device(target.name);
                        links.push((format!("{from}→{}", target.name), streamed));
                        links.len() - 1
                    }
                };
                Home::Streamed {
                    data: Arc::new(data),
                    link,
                }
            }
        };
        engine_units.push(EngineUnit {
            name: unit.name,
            home,
        });
    }
    let k = if links.is_empty() { 0 } else { slots.max(1) };
    let start = |e: String| format!("starting the streaming engine: {e}");
    let t0 = Instant::now();
    let (backend, slot_bytes) =
        make_backend(target, &engine_units, &links, k, largest, pools).map_err(start)?;
    // The CUDA backend page-locks host homes and uploads donor homes as it starts.
    if target.device.is_cuda() && host_bytes > 0 {
        phases.since(Phase::Pin, t0, host_bytes);
    }
    let engine = Engine::new(
        engine_units,
        k,
        backend,
        target.device.clone(),
        target.dtype,
    )
    .map_err(|e| start(e.to_string()))?;
    Ok(BuiltEngine {
        engine,
        held,
        slot_bytes,
        spilled,
        phases,
    })
}

/// Writes the tensors of `data` that are not ranges of a mapped file (patched, assembled or
/// converted at load) to an unnamed file in `dir`, syncs it, maps it, and returns the unit
/// with those tensors as ranges of the new map, and the bytes written.
fn spill(data: UnitData, dir: &Path) -> Result<(UnitData, u64), String> {
    const ALIGN: usize = 64;
    let owned: Vec<usize> = data
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.bytes, Bytes::Owned(_)))
        .map(|(i, _)| i)
        .collect();
    if owned.is_empty() {
        return Ok((data, 0));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the cache folder {}: {e}", dir.display()))?;
    let io = |what: &str, e: std::io::Error| {
        format!(
            "cannot {what} a spill file in {} (patched weights homed on disk are written there): {e}",
            dir.display()
        )
    };
    let file = tempfile::tempfile_in(dir).map_err(|e| io("create", e))?;
    let mut offsets = Vec::with_capacity(owned.len());
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        let mut pos = 0usize;
        for &i in &owned {
            let pad = pos.next_multiple_of(ALIGN) - pos;
            w.write_all(&[0u8; ALIGN][..pad])
                .map_err(|e| io("write", e))?;
            pos += pad;
            let b = data.tensors[i].bytes.as_slice();
            w.write_all(b).map_err(|e| io("write", e))?;
            offsets.push((pos, b.len()));
            pos += b.len();
        }
        w.flush().map_err(|e| io("write", e))?;
    }
    file.sync_data().map_err(|e| io("sync", e))?;
    // SAFETY: the file is unnamed and private to this process; nothing else can change it
    // while it is mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("map", e))?);
    let mut written = 0u64;
    let mut tensors = data.tensors;
    for (&i, &(start, len)) in owned.iter().zip(&offsets) {
        written += len as u64;
        tensors[i] = HostTensor {
            bytes: Bytes::Mapped {
                map: map.clone(),
                start,
                len,
            },
            ..tensors[i].clone()
        };
    }
    Ok((
        UnitData {
            name: data.name,
            tensors,
        },
        written,
    ))
}

/// The engine backend for `units` on `target`, with `links` (name, home) and `slots` slots;
/// returns it with the bytes its slots hold. The one place backends are created: on CUDA
/// builds a GPU compute device gets the CUDA backend (its page-locked copies in `pools`);
/// everything else the CPU backend. `largest` is the largest streamed unit as materialised
/// (CPU slot size).
fn make_backend(
    target: &Target,
    units: &[EngineUnit],
    links: &[(String, UnitHome)],
    slots: usize,
    largest: u64,
    pools: &mut Pools,
) -> Result<(Box<dyn Backend>, u64), String> {
    let names: Vec<String> = links.iter().map(|(n, _)| n.clone()).collect();
    #[cfg(feature = "cuda")]
    if target.device.is_cuda() {
        let homes: Vec<UnitHome> = links.iter().map(|(_, h)| *h).collect();
        let b = super::cuda::CudaBackend::new(
            &target.device,
            units,
            &names,
            &homes,
            slots,
            &mut pools.pinned,
        )
        .map_err(|e| e.to_string())?;
        let slot_bytes = b.slot_bytes();
        return Ok((Box::new(b), slot_bytes));
    }
    #[cfg(not(feature = "cuda"))]
    if target.device.is_cuda() {
        return Err(format!(
            "compute on {}: this mgpu was built without CUDA (build it with `--features cuda`, see docs/gpu.md), or compute on `cpu`",
            target.name
        ));
    }
    let _ = pools;
    let _ = units;
    let b = CpuBackend::new(&names, slots, target.dtype).map_err(|e| e.to_string())?;
    Ok((Box::new(b), slots as u64 * largest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_maps_owned_tensors_and_keeps_values() {
        let dir = tempfile::tempdir().unwrap();
        let t = |name: &str, vals: &[f32]| HostTensor {
            name: name.into(),
            dtype: CDType::F32,
            shape: vec![vals.len()],
            bytes: Bytes::Owned(Arc::from(
                vals.iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )),
            quant: None,
            scale: None,
            lora: None,
        };
        let data = UnitData {
            name: "u".into(),
            tensors: vec![t("a", &[1.0, 2.0, 3.0]), t("b", &[-4.5])],
        };
        let before = data.materialize(&Device::Cpu, CDType::F32).unwrap();
        let (spilled, n) = spill(data, dir.path()).unwrap();
        assert_eq!(n, 16);
        assert!(spilled
            .tensors
            .iter()
            .all(|t| matches!(t.bytes, Bytes::Mapped { .. })));
        let after = spilled.materialize(&Device::Cpu, CDType::F32).unwrap();
        for k in ["a", "b"] {
            assert_eq!(
                before[k].to_vec1::<f32>().unwrap(),
                after[k].to_vec1::<f32>().unwrap()
            );
        }
        // Unnamed: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn spill_reports_an_unusable_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let data = UnitData {
            name: "u".into(),
            tensors: vec![HostTensor {
                name: "a".into(),
                dtype: CDType::F32,
                shape: vec![1],
                bytes: Bytes::Owned(Arc::from(vec![0u8; 4])),
                quant: None,
                scale: None,
                lora: None,
            }],
        };
        let e = spill(data, &file).unwrap_err();
        assert!(
            e.contains("cache folder") || e.contains("spill file"),
            "{e}"
        );
    }
}
