//! Text encoding: every distinct prompt of the run through CLIP-L (pooled vector) and T5
//! (hidden states), in streaming passes that apply each fetched block to every prompt of a
//! chunk in turn, as denoising does for jobs (docs/decisions.md §4).
//!
//! Truncation: a prompt longer than an encoder keeps its first tokens (CLIP: 77 with
//! `<|endoftext|>` last; T5: 512 for dev, 256 for schnell), as diffusers and ComfyUI do. It is
//! reported as a note naming the prompt and both counts; the job goes on (there is no
//! per-job `strict` setting to make it fail). A prompt the tokenizer or the encoder cannot
//! handle fails the jobs that use it, alone.

use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor};

use super::models::{ClipModel, T5Model};
use crate::exec::{Event, ExecError, JobError};

/// Prompts per encoder pass: the per-prompt activations of T5-XXL (hidden states and the
/// position bias, ≈ 75 MB in f32 at 512 tokens) bound it, not the weights' transfer.
pub const ENCODE_CHUNK: usize = 8;

/// One prompt's conditioning, on the host, in the diffusion model's compute dtype (what
/// `FluxDit::prepare` converts it to anyway, so storing it converted changes nothing).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// T5 hidden states `[1, L, 4096]`.
    pub txt: Tensor,
    /// CLIP pooled output `[1, 768]`.
    pub vec: Tensor,
    /// Seconds spent encoding this prompt (its share of the passes).
    pub seconds: f64,
}

fn short(prompt: &str) -> String {
    let mut s: String = prompt.chars().take(60).collect();
    if s.len() < prompt.len() {
        s.push('…');
    }
    s
}

/// Encodes `prompts` (distinct) with both encoders; one result per prompt, in order.
pub(crate) fn encode(
    clip: &mut ClipModel,
    t5: &mut T5Model,
    prompts: &[String],
    t5_len: usize,
    store: CDType,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<Conditioning, JobError>>, ExecError> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(ENCODE_CHUNK) {
        let t0 = Instant::now();
        let pooled = clip_chunk(clip, chunk, events)?;
        let hidden = t5_chunk(t5, chunk, t5_len, events)?;
        let share = t0.elapsed().as_secs_f64() / chunk.len() as f64;
        for (p, h) in pooled.into_iter().zip(hidden) {
            let host = |t: Tensor| -> Result<Tensor, JobError> {
                t.to_dtype(store)
                    .and_then(|t| t.to_device(&Device::Cpu))
                    .map_err(|e| JobError::new(format!("storing the text encoding: {e}")))
            };
            out.push(match (p, h) {
                (Ok(vec), Ok(txt)) => host(txt).and_then(|txt| {
                    Ok(Conditioning {
                        txt,
                        vec: host(vec)?,
                        seconds: share,
                    })
                }),
                (Err(e), _) | (_, Err(e)) => Err(e),
            });
        }
    }
    Ok(out)
}

fn clip_chunk(
    clip: &mut ClipModel,
    prompts: &[String],
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<Tensor, JobError>>, ExecError> {
    let mut states: Vec<Result<crate::models::clip::State, JobError>> = prompts
        .iter()
        .map(|p| {
            let e = clip
                .tokenizer
                .encode(p)
                .map_err(|e| JobError::new(format!("CLIP tokenizer: {e}")))?;
            if e.truncated {
                events(Event::Note {
                    message: format!(
                        "prompt \"{}\" is {} CLIP tokens; `{}` keeps {} (the rest is ignored)",
                        short(p),
                        e.tokens,
                        clip.name,
                        e.ids.len()
                    ),
                });
            }
            clip.model
                .prepare(&e.ids)
                .map_err(|e| JobError::new(format!("CLIP `{}`: {e}", clip.name)))
        })
        .collect();
    let (model, name) = (&clip.model, clip.name.clone());
    clip.engine.pass(|i, w| -> Result<(), ExecError> {
        for s in states.iter_mut() {
            if let Ok(st) = s {
                if let Err(e) = model.run_unit(i, w.var_builder(), st) {
                    *s = Err(JobError::new(format!("CLIP `{name}`: {e}")));
                }
            }
        }
        Ok(())
    })?;
    Ok(states
        .into_iter()
        .map(|s| {
            let s = s?;
            model
                .finish(s)
                .map(|o| o.pooled)
                .map_err(|e| JobError::new(format!("CLIP `{name}`: {e}")))
        })
        .collect())
}

fn t5_chunk(
    t5: &mut T5Model,
    prompts: &[String],
    len: usize,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<Tensor, JobError>>, ExecError> {
    let mut states: Vec<Result<crate::models::t5::State, JobError>> = prompts
        .iter()
        .map(|p| {
            let e = t5
                .tokenizer
                .encode(p, len)
                .map_err(|e| JobError::new(format!("T5 tokenizer: {e}")))?;
            if e.truncated {
                events(Event::Note {
                    message: format!(
                        "prompt \"{}\" is {} T5 tokens; `{}` keeps {} (the rest is ignored)",
                        short(p),
                        e.tokens,
                        t5.name,
                        e.ids.len()
                    ),
                });
            }
            t5.enc
                .prepare(&e.ids)
                .map_err(|e| JobError::new(format!("T5 `{}`: {e}", t5.name)))
        })
        .collect();
    let (enc, name) = (&t5.enc, t5.name.clone());
    t5.engine.pass(|i, w| -> Result<(), ExecError> {
        for s in states.iter_mut() {
            if let Ok(st) = s {
                if let Err(e) = enc.run_unit(i, w.var_builder(), st) {
                    *s = Err(JobError::new(format!("T5 `{name}`: {e}")));
                }
            }
        }
        Ok(())
    })?;
    Ok(states
        .into_iter()
        .map(|s| {
            enc.finish(s?)
                .map_err(|e| JobError::new(format!("T5 `{name}`: {e}")))
        })
        .collect())
}
