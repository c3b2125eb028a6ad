//! Text encoding: every distinct prompt of the run through the pipeline's text encoders —
//! the context encoder's hidden states (T5-XXL for FLUX, umT5-XXL for Wan) and, for families
//! that take one, CLIP-L's pooled vector — in streaming passes that apply each fetched block
//! to every prompt of a chunk in turn, as denoising does for jobs (docs/decisions.md §4).
//!
//! Truncation: a prompt longer than an encoder keeps its first tokens (CLIP: 77 with
//! `<|endoftext|>` last; T5: 512 for dev, 256 for schnell; umT5: 512), as diffusers and
//! ComfyUI do. It is reported as a note naming the prompt and both counts; the job goes on
//! (there is no per-job `strict` setting to make it fail). A prompt the tokenizer or the
//! encoder cannot handle fails the jobs that use it, alone.
//!
//! Masked encoding (Wan): the context encoder attends only to the prompt's real tokens and
//! the states past them are zeroed, as Wan's reference pipeline and diffusers' `WanPipeline`
//! do; FLUX encodes all padded tokens unmasked, as its references do.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor};

use candle_nn::VarBuilder;

use super::models::{ClipModel, Ctx, Eng, T5Model};
use crate::exec::phase::Phase;
use crate::exec::{Event, ExecError, JobError};
use crate::models::tokenize::clean::wan_prompt_clean;
use crate::models::tokenize::{Encoded, TokenizeError};

/// Prompts per encoder pass: the per-prompt activations of T5-XXL (hidden states and the
/// position bias, ≈ 75 MB in f32 at 512 tokens) bound it, not the weights' transfer.
pub const ENCODE_CHUNK: usize = 8;

/// One prompt's conditioning, on the host, in the diffusion model's compute dtype (what the
/// model's `prepare` converts it to anyway, so storing it converted changes nothing).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The context encoder's hidden states `[1, L, D]`.
    pub context: Tensor,
    /// CLIP's pooled output `[1, 768]`, for families that take it.
    pub pooled: Option<Tensor>,
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

/// The loaded text encoders, by model name.
#[derive(Default)]
pub(crate) struct TextModels {
    clips: HashMap<String, ClipModel>,
    t5s: HashMap<String, T5Model>,
}

impl TextModels {
    /// Encodes `prompts` (distinct) with context encoder `context` (`tokens` long, `masked`
    /// or not) and pooled encoder `pooled`, loading them if needed; one result per prompt,
    /// in order. Results are stored on the host in `store`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &mut self,
        cx: &mut Ctx,
        context: &str,
        pooled: Option<&str>,
        prompts: &[String],
        (tokens, masked): (usize, bool),
        store: CDType,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<Result<Conditioning, JobError>>, ExecError> {
        if let Some(p) = pooled {
            if !self.clips.contains_key(p) {
                let m = ClipModel::load(cx, p, events)?;
                self.clips.insert(p.to_string(), m);
            }
        }
        if !self.t5s.contains_key(context) {
            let m = T5Model::load(cx, context, events)?;
            self.t5s.insert(context.to_string(), m);
        }
        for m in pooled.iter().copied().chain(std::iter::once(context)) {
            events(Event::Stage {
                model: m.to_string(),
                stage: format!(
                    "encoding {} prompt{}",
                    prompts.len(),
                    if prompts.len() == 1 { "" } else { "s" }
                ),
            });
        }
        let mut clip = pooled.and_then(|p| self.clips.get_mut(p));
        let Some(t5) = self.t5s.get_mut(context) else {
            return Err(ExecError::Other(format!(
                "text encoder `{context}` not loaded (a bug in the executor)"
            )));
        };
        let mut out = Vec::with_capacity(prompts.len());
        let (mut clip_s, mut t5_s) = (0.0, 0.0);
        for chunk in prompts.chunks(ENCODE_CHUNK) {
            let t0 = Instant::now();
            let pooled_out = match clip.as_deref_mut() {
                Some(c) => clip_chunk(c, chunk, events)?
                    .into_iter()
                    .map(Some)
                    .collect(),
                None => vec![None; chunk.len()],
            };
            let t1 = Instant::now();
            let hidden = t5_chunk(t5, chunk, tokens, masked, events)?;
            clip_s += (t1 - t0).as_secs_f64();
            t5_s += t1.elapsed().as_secs_f64();
            let share = t0.elapsed().as_secs_f64() / chunk.len() as f64;
            for (p, h) in pooled_out.into_iter().zip(hidden) {
                let host = |t: Tensor| -> Result<Tensor, JobError> {
                    t.to_dtype(store)
                        .and_then(|t| t.to_device(&Device::Cpu))
                        .map_err(|e| JobError::new(format!("storing the text encoding: {e}")))
                };
                out.push(match (p.transpose(), h) {
                    (Ok(vec), Ok(txt)) => host(txt).and_then(|context| {
                        Ok(Conditioning {
                            context,
                            pooled: vec.map(host).transpose()?,
                            seconds: share,
                        })
                    }),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                });
            }
        }
        let phase = |model: &str, seconds| Event::Phase {
            model: model.to_string(),
            phase: Phase::Encode,
            seconds,
            bytes: 0,
        };
        if let Some(p) = pooled {
            events(phase(p, clip_s));
        }
        events(phase(context, t5_s));
        Ok(out)
    }

    /// Drops text encoder `name` if it is loaded; whether it was.
    pub fn release(&mut self, name: &str) -> bool {
        self.clips.remove(name).is_some() | self.t5s.remove(name).is_some()
    }
}

fn clip_chunk(
    clip: &mut ClipModel,
    prompts: &[String],
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<Tensor, JobError>>, ExecError> {
    let (model, tokenizer) = (&clip.model, &clip.tokenizer);
    let encoder = Encoder {
        label: "CLIP",
        name: &clip.name,
        tokenize: |p: &str| tokenizer.encode(p),
        prepare: |e: &Encoded| model.prepare(&e.ids),
        run_unit: |i, vb, st: &mut _| model.run_unit(i, vb, st),
        finish: |st| model.finish(st).map(|o| o.pooled),
    };
    encoder.chunk(&mut clip.engine, prompts, events)
}

fn t5_chunk(
    t5: &mut T5Model,
    prompts: &[String],
    len: usize,
    masked: bool,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<Tensor, JobError>>, ExecError> {
    let (enc, tokenizer, umt5) = (&t5.enc, &t5.tokenizer, t5.umt5);
    let label = if umt5 { "umT5" } else { "T5" };
    let encoder = Encoder {
        label,
        name: &t5.name,
        // Wan's pipeline (and diffusers' WanPipeline) clean prompts before umT5 sees them.
        tokenize: |p: &str| {
            if umt5 {
                tokenizer.encode(&wan_prompt_clean(p), len)
            } else {
                tokenizer.encode(p, len)
            }
        },
        prepare: |e: &Encoded| {
            if masked {
                enc.prepare_masked(&e.ids, e.valid_len())
            } else {
                enc.prepare(&e.ids)
            }
        },
        run_unit: |i, vb, st: &mut _| enc.run_unit(i, vb, st),
        finish: |st| enc.finish(st),
    };
    encoder.chunk(&mut t5.engine, prompts, events)
}

/// A unit-streamed text encoder, as one chunk of prompts goes through it.
struct Encoder<'a, Tk, Pr, Ru, Fi> {
    /// `CLIP`, `T5` or `umT5`, for messages.
    label: &'static str,
    /// The model's name in the manifest.
    name: &'a str,
    tokenize: Tk,
    prepare: Pr,
    run_unit: Ru,
    finish: Fi,
}

impl<S, Tk, Pr, Ru, Fi> Encoder<'_, Tk, Pr, Ru, Fi>
where
    Tk: Fn(&str) -> Result<Encoded, TokenizeError>,
    Pr: Fn(&Encoded) -> candle_core::Result<S>,
    Ru: Fn(usize, VarBuilder<'static>, &mut S) -> candle_core::Result<()>,
    Fi: Fn(S) -> candle_core::Result<Tensor>,
{
    /// Tokenises each prompt (a note when it is cut), prepares its state, applies every unit
    /// of one engine pass to every state in turn, and finishes: one result per prompt; a
    /// prompt that fails fails alone.
    fn chunk(
        &self,
        engine: &mut Eng,
        prompts: &[String],
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<Result<Tensor, JobError>>, ExecError> {
        let (label, name) = (self.label, self.name);
        let failed = |e: candle_core::Error| JobError::new(format!("{label} `{name}`: {e}"));
        let mut states: Vec<Result<S, JobError>> = prompts
            .iter()
            .map(|p| {
                let e = (self.tokenize)(p)
                    .map_err(|e| JobError::new(format!("{label} tokenizer: {e}")))?;
                if e.truncated {
                    events(Event::Note {
                        message: format!(
                            "prompt \"{}\" is {} {label} tokens; `{name}` keeps {} (the rest is ignored)",
                            short(p),
                            e.tokens,
                            e.ids.len()
                        ),
                    });
                }
                (self.prepare)(&e).map_err(failed)
            })
            .collect();
        engine.pass(|i, w| -> Result<(), ExecError> {
            for s in states.iter_mut() {
                if let Ok(st) = s {
                    if let Err(e) = (self.run_unit)(i, w.var_builder(), st) {
                        *s = Err(failed(e));
                    }
                }
            }
            Ok(())
        })?;
        Ok(states
            .into_iter()
            .map(|s| (self.finish)(s?).map_err(failed))
            .collect())
    }
}
