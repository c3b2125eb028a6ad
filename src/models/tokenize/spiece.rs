//! A reader for SentencePiece model files (`spiece.model`, T5's original tokenizer format).
//!
//! The file is one protobuf `ModelProto` message (sentencepiece's `sentencepiece_model.proto`):
//! field 1 `pieces` (repeated `SentencePiece { piece = 1, score = 2, type = 3 }`), field 2
//! `trainer_spec` (of which we need `model_type` = 3, `byte_fallback` = 35, `unk_id` = 40) and
//! field 3 `normalizer_spec` (`name` = 1, `precompiled_charsmap` = 2, `add_dummy_prefix` = 3,
//! `remove_extra_whitespaces` = 4, `escape_whitespaces` = 5). Everything else is skipped by wire
//! type. The protobuf subset is small enough to read by hand, with a bounds check on every read,
//! so no code generator or protobuf runtime is needed. [`super::build`] turns the result into a
//! Unigram tokenizer the way transformers' `T5Tokenizer` does.

/// Piece kinds (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// `TrainerSpec.model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
}

/// The parts of a SentencePiece model a tokenizer needs. Defaults are the proto2 defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    pub model_type: ModelType,
    pub unk_id: i32,
    pub byte_fallback: bool,
    pub normalizer_name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

/// What is wrong with the bytes, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid SentencePiece model at byte {offset}: {what}")]
pub struct SpmError {
    pub offset: usize,
    pub what: String,
}

/// A protobuf field: its number and its payload by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` inside the whole file, for messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, what: impl Into<String>) -> SpmError {
        SpmError {
            offset: self.base + self.pos,
            what: what.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, SpmError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err("varint longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SpmError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "field of {n} bytes runs past the end of its message ({} bytes left)",
                self.buf.len() - self.pos
            )));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field, or `None` at the end of the message. Returns the payload's file offset.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>, usize)>, SpmError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(self.err("field number 0"));
        }
        let at = self.base + self.pos;
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n =
                    usize::try_from(n).map_err(|_| self.err("length does not fit in memory"))?;
                let at = self.base + self.pos;
                return Ok(Some((number, Value::Bytes(self.take(n)?), at)));
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            w => return Err(self.err(format!("unsupported wire type {w} for field {number}"))),
        };
        Ok(Some((number, value, at)))
    }
}

fn utf8(bytes: &[u8], at: usize, what: &str) -> Result<String, SpmError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| SpmError {
        offset: at,
        what: format!("{what} is not UTF-8 ({e})"),
    })
}

fn bad_type(at: usize, field: &str) -> SpmError {
    SpmError {
        offset: at,
        what: format!("field `{field}` has the wrong wire type"),
    }
}

fn parse_piece(buf: &[u8], base: usize) -> Result<Piece, SpmError> {
    let mut r = Reader::new(buf, base);
    let (mut piece, mut score, mut kind) = (None, 0.0f32, PieceKind::Normal);
    while let Some((n, v, at)) = r.field()? {
        match (n, v) {
            (1, Value::Bytes(b)) => piece = Some(utf8(b, at, "a piece")?),
            (2, Value::Fixed32(f)) => score = f32::from_bits(f),
            (3, Value::Varint(t)) => {
                kind = PieceKind::from_proto(t).ok_or_else(|| SpmError {
                    offset: at,
                    what: format!("unknown piece type {t} (expected 1–6)"),
                })?
            }
            (1, _) => return Err(bad_type(at, "piece")),
            (2, _) => return Err(bad_type(at, "score")),
            (3, _) => return Err(bad_type(at, "type")),
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| SpmError {
        offset: base,
        what: "a piece without text".into(),
    })?;
    Ok(Piece { piece, score, kind })
}

impl SpmModel {
    /// Parses a `ModelProto`. Fails with the byte offset of the first malformed field.
    pub fn parse(bytes: &[u8]) -> Result<SpmModel, SpmError> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            model_type: ModelType::Unigram,
            unk_id: 0,
            byte_fallback: false,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut r = Reader::new(bytes, 0);
        while let Some((n, v, at)) = r.field()? {
            match (n, v) {
                (1, Value::Bytes(b)) => m.pieces.push(parse_piece(b, at)?),
                (2, Value::Bytes(b)) => m.read_trainer_spec(b, at)?,
                (3, Value::Bytes(b)) => m.read_normalizer_spec(b, at)?,
                (1..=3, _) => return Err(bad_type(at, "pieces/trainer_spec/normalizer_spec")),
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(SpmError {
                offset: bytes.len(),
                what: "no pieces (is this a SentencePiece .model file?)".into(),
            });
        }
        let n = m.pieces.len();
        if m.unk_id < 0 || m.unk_id as usize >= n {
            return Err(SpmError {
                offset: bytes.len(),
                what: format!("unk_id {} is not a piece id (0..{n})", m.unk_id),
            });
        }
        Ok(m)
    }

    fn read_trainer_spec(&mut self, buf: &[u8], base: usize) -> Result<(), SpmError> {
        let mut r = Reader::new(buf, base);
        while let Some((n, v, at)) = r.field()? {
            match (n, v) {
                (3, Value::Varint(t)) => {
                    self.model_type = match t {
                        1 => ModelType::Unigram,
                        2 => ModelType::Bpe,
                        3 => ModelType::Word,
                        4 => ModelType::Char,
                        _ => {
                            return Err(SpmError {
                                offset: at,
                                what: format!("unknown model_type {t}"),
                            })
                        }
                    }
                }
                (35, Value::Varint(b)) => self.byte_fallback = b != 0,
                // int32 fields are sign-extended to 64 bits on the wire.
                (40, Value::Varint(id)) => self.unk_id = id as i64 as i32,
                (3 | 35 | 40, _) => return Err(bad_type(at, "trainer_spec field")),
                _ => {}
            }
        }
        Ok(())
    }

    fn read_normalizer_spec(&mut self, buf: &[u8], base: usize) -> Result<(), SpmError> {
        let mut r = Reader::new(buf, base);
        while let Some((n, v, at)) = r.field()? {
            match (n, v) {
                (1, Value::Bytes(b)) => self.normalizer_name = utf8(b, at, "the normalizer name")?,
                (2, Value::Bytes(b)) => self.precompiled_charsmap = b.to_vec(),
                (3, Value::Varint(b)) => self.add_dummy_prefix = b != 0,
                (4, Value::Varint(b)) => self.remove_extra_whitespaces = b != 0,
                (5, Value::Varint(b)) => self.escape_whitespaces = b != 0,
                (1..=5, _) => return Err(bad_type(at, "normalizer_spec field")),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn piece(p: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut m = Vec::new();
        bytes_field(1, p.as_bytes(), &mut m);
        varint(2 << 3 | 5, &mut m);
        m.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut m);
        varint(kind, &mut m);
        m
    }

    fn model() -> Vec<u8> {
        let mut out = Vec::new();
        bytes_field(1, &piece("<pad>", 0.0, 3), &mut out);
        bytes_field(1, &piece("<unk>", 0.0, 2), &mut out);
        bytes_field(1, &piece("▁a", -1.5, 1), &mut out);
        let mut trainer = Vec::new();
        varint(3 << 3, &mut trainer);
        varint(1, &mut trainer);
        varint(40 << 3, &mut trainer);
        varint(1, &mut trainer);
        varint(4 << 3, &mut trainer); // vocab_size: skipped
        varint(3, &mut trainer);
        bytes_field(2, &trainer, &mut out);
        let mut norm = Vec::new();
        bytes_field(1, b"nmt_nfkc", &mut norm);
        bytes_field(2, &[1, 2, 3], &mut norm);
        varint(3 << 3, &mut norm);
        varint(0, &mut norm);
        bytes_field(3, &norm, &mut out);
        out
    }

    #[test]
    fn parses_hand_built_model() {
        let m = SpmModel::parse(&model()).unwrap();
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(
            m.pieces[2],
            Piece {
                piece: "▁a".into(),
                score: -1.5,
                kind: PieceKind::Normal
            }
        );
        assert_eq!(m.pieces[0].kind, PieceKind::Control);
        assert_eq!(m.unk_id, 1);
        assert_eq!(m.model_type, ModelType::Unigram);
        assert_eq!(m.normalizer_name, "nmt_nfkc");
        assert_eq!(m.precompiled_charsmap, vec![1, 2, 3]);
        assert!(!m.add_dummy_prefix);
        assert!(m.remove_extra_whitespaces && m.escape_whitespaces);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = model();
        for len in 0..full.len() {
            // Cutting inside a field must fail; cutting between top-level fields may parse.
            let _ = SpmModel::parse(&full[..len]);
        }
        let e = SpmModel::parse(&full[..full.len() - 2]).unwrap_err();
        assert!(e.to_string().contains("runs past the end"), "{e}");
    }

    #[test]
    fn rejects_non_models() {
        let e = SpmModel::parse(b"{\"version\": \"1.0\"}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("not a valid SentencePiece model at byte"),
            "{e}"
        );
        assert!(SpmModel::parse(&[]).unwrap_err().what.contains("no pieces"));
        let mut bad_unk = Vec::new();
        bytes_field(1, &piece("a", 0.0, 1), &mut bad_unk);
        let mut trainer = Vec::new();
        varint(40 << 3, &mut trainer);
        varint(7, &mut trainer);
        bytes_field(2, &trainer, &mut bad_unk);
        assert!(SpmModel::parse(&bad_unk)
            .unwrap_err()
            .what
            .contains("unk_id 7"));
    }
}
