//! A restricted unpickler: runs the pickle opcodes PyTorch's `torch.save` emits for state
//! dicts and builds plain data (dicts, lists, tuples, strings, numbers) plus storage and tensor
//! references. It never executes code: every `GLOBAL` is checked against a fixed allowlist of
//! names whose meaning is implemented here (an `OrderedDict`, the tensor-rebuild functions, the
//! storage classes, dtypes); any other global is refused before anything is built from it.
//!
//! Every length in the stream is bounded by the bytes left in the stream, and shared values are
//! reference-counted, so a hostile pickle cannot make this allocate more than a small multiple
//! of its own size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use crate::weights::DType;

/// A global the unpickler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends: a typed storage of this dtype.
    Storage(DType),
    /// `torch.storage.UntypedStorage`: bytes, typed by the tensor that uses them.
    UntypedStorage,
    /// `torch.float16` and friends.
    Dtype(DType),
    /// `torch.Size`: a tuple.
    Size,
}

impl Global {
    /// The allowlist. Anything else is refused.
    fn lookup(module: &str, name: &str) -> Option<Global> {
        use DType::*;
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch.storage" | "torch", "UntypedStorage") => Global::UntypedStorage,
            ("torch", "Size") => Global::Size,
            ("torch", storage) if storage.ends_with("Storage") => Global::Storage(match storage {
                "FloatStorage" => F32,
                "HalfStorage" => F16,
                "BFloat16Storage" => BF16,
                "DoubleStorage" => F64,
                "LongStorage" => I64,
                "IntStorage" => I32,
                "ShortStorage" => I16,
                "CharStorage" => I8,
                "ByteStorage" => U8,
                "BoolStorage" => Bool,
                _ => return None,
            }),
            ("torch", dtype) => Global::Dtype(match dtype {
                "float32" | "float" => F32,
                "float16" | "half" => F16,
                "bfloat16" => BF16,
                "float64" | "double" => F64,
                "int64" | "long" => I64,
                "int32" | "int" => I32,
                "int16" | "short" => I16,
                "int8" => I8,
                "uint8" => U8,
                "bool" => Bool,
                "float8_e4m3fn" => F8_E4M3,
                "float8_e5m2" => F8_E5M2,
                _ => return None,
            }),
            _ => return None,
        })
    }
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The archive entry `data/<key>`.
    pub key: String,
    /// `None` for an untyped (byte) storage.
    pub dtype: Option<DType>,
    /// Elements of `dtype` (bytes when untyped).
    pub numel: u64,
}

/// A tensor rebuilt by `_rebuild_tensor_v2/v3`: a view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub dtype: DType,
    /// In elements of `dtype`.
    pub storage_offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A value on the unpickler's stack.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Dict>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

/// An insertion-ordered dict with hashable primitive keys.
#[derive(Debug, Default)]
pub struct Dict {
    pub entries: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) -> Result<(), String> {
        let key = match &k {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(*b),
            Value::Int(i) => Key::Int(*i),
            Value::Str(s) => Key::Str(s.clone()),
            other => {
                return Err(format!(
                    "dict key of kind {} (only str, int, bool and None keys are supported)",
                    other.kind()
                ))
            }
        };
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = v,
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push((k, v));
            }
        }
        Ok(())
    }
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Why unpickling stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickleError {
    /// A global outside the allowlist.
    Refused { module: String, name: String },
    /// Anything else, at byte `at` of the pickle stream.
    Bad { at: usize, message: String },
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Refused { module, name } => write!(f, "refusing global {module}.{name}"),
            PickleError::Bad { at, message } => write!(f, "at byte {at} of the pickle: {message}"),
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Values with their nesting depth (0 for a scalar, 1 for a container of scalars, ...).
    stack: Vec<(Value, u32)>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, u32)>,
    /// Storages by key, so two tensors naming one storage share it.
    storages: HashMap<String, Rc<StorageRef>>,
    op_at: usize,
}

/// How deep values may nest. A state dict nests a handful of levels; a hostile pickle of
/// 150 000 nested tuples must stop with an error, and [`Value`]'s drop is iterative besides.
pub const MAX_DEPTH: u32 = 1000;

/// Runs the pickle in `data` and returns the value it builds.
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: HashMap::new(),
        op_at: 0,
    };
    m.run()
}

impl<'a> Machine<'a> {
    fn bad(&self, message: impl Into<String>) -> PickleError {
        PickleError::Bad {
            at: self.op_at,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.data.len() - self.pos {
            return Err(self.bad(format!(
                "needs {n} bytes but the stream has {} left (truncated)",
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn len_u64(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| {
                self.bad(format!(
                    "length {n} exceeds the {} bytes left in the stream",
                    self.data.len() - self.pos
                ))
            })
    }

    fn push(&mut self, v: Value) {
        self.stack.push((v, 0));
    }

    /// Pushes a container whose deepest element has depth `inner`.
    fn push_container(&mut self, v: Value, inner: u32) -> Result<(), PickleError> {
        let depth = self.nest(inner)?;
        self.stack.push((v, depth));
        Ok(())
    }

    /// The depth of a container holding an element of depth `inner`, within [`MAX_DEPTH`].
    fn nest(&self, inner: u32) -> Result<u32, PickleError> {
        if inner >= MAX_DEPTH {
            return Err(self.bad(format!(
                "values nested more than {MAX_DEPTH} deep (a state dict nests a few levels; \
                 this pickle is malformed or hostile)"
            )));
        }
        Ok(inner + 1)
    }

    fn pop_d(&mut self) -> Result<(Value, u32), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.bad("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_d()?.0)
    }

    fn top_d(&self) -> Result<&(Value, u32), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.bad("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.bad("stack underflow"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        Ok(&self.top_d()?.0)
    }

    /// Raises the recorded depth of the container on top of the stack after an element of
    /// depth `inner` went into it.
    fn deepen_top(&mut self, inner: u32) -> Result<(), PickleError> {
        let depth = self.nest(inner)?;
        if let Some(top) = self.stack.last_mut() {
            top.1 = top.1.max(depth);
        }
        Ok(())
    }

    /// Pops everything above the last MARK, and the mark; with the deepest element's depth.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32), PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.bad("no MARK to pop to"))?;
        let items = self.stack.split_off(m);
        let depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        Ok((items.into_iter().map(|(v, _)| v).collect(), depth))
    }

    fn text_line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.bad("unterminated text argument"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.bad("text argument is not UTF-8"))
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        Global::lookup(module, name)
            .map(Value::Global)
            .ok_or_else(|| PickleError::Refused {
                module: module.to_string(),
                name: name.to_string(),
            })
    }

    fn memo_get(&self, i: u32) -> Result<(Value, u32), PickleError> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo entry {i} was never stored")))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.arr::<1>()?[0];
            match op {
                0x80 => {
                    // PROTO
                    let p = self.arr::<1>()?[0];
                    if p > 5 {
                        return Err(self.bad(format!("pickle protocol {p} (supported: 2..=5)")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only
                    self.arr::<8>()?;
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    let _ = self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_d()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push(Value::Int(v.into()))
                }
                b'K' => {
                    let v = self.arr::<1>()?[0];
                    self.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.push(Value::Int(v.into()))
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4: little-endian two's complement
                    let n = if op == 0x8a {
                        self.arr::<1>()?[0] as u64
                    } else {
                        u32::from_le_bytes(self.arr()?) as u64
                    };
                    let n = self.len_u64(n)?;
                    if n > 8 {
                        return Err(self.bad(format!("integer of {n} bytes does not fit in 64 bits")));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.push(Value::Float(v))
                }
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE (u32 len), SHORT_BINUNICODE (u8), BINUNICODE8 (u64)
                    let n = match op {
                        b'X' => u32::from_le_bytes(self.arr()?) as u64,
                        0x8c => self.arr::<1>()?[0] as u64,
                        _ => u64::from_le_bytes(self.arr()?),
                    };
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).map_err(|_| self.bad("string is not valid UTF-8"))?;
                    self.push(Value::Str(s.into()));
                }
                b'T' | b'U' => {
                    // BINSTRING (i32 len), SHORT_BINSTRING (u8): Python 2 str, read as text
                    let n = if op == b'T' {
                        u32::from_le_bytes(self.arr()?) as u64
                    } else {
                        self.arr::<1>()?[0] as u64
                    };
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    self.push(Value::Str(String::from_utf8_lossy(b).into()));
                }
                b'B' | b'C' | 0x8e => {
                    // BINBYTES (u32), SHORT_BINBYTES (u8), BINBYTES8 (u64)
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.arr()?) as u64,
                        b'C' => self.arr::<1>()?[0] as u64,
                        _ => u64::from_le_bytes(self.arr()?),
                    };
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.into()));
                }
                b')' => self.push_container(Value::Tuple(Rc::from(Vec::new())), 0)?,
                b't' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_container(Value::Tuple(items.into()), d)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    let mut d = 0;
                    for _ in 0..n {
                        let (v, vd) = self.pop_d()?;
                        items.push(v);
                        d = d.max(vd);
                    }
                    items.reverse();
                    self.push_container(Value::Tuple(items.into()), d)?;
                }
                b']' => self.push_container(Value::List(Rc::new(RefCell::new(Vec::new()))), 0)?,
                b'l' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_container(Value::List(Rc::new(RefCell::new(items))), d)?;
                }
                b'a' => {
                    let (v, d) = self.pop_d()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => return Err(self.bad(format!("APPEND to a {}", other.kind()))),
                    }
                    self.deepen_top(d)?;
                }
                b'e' => {
                    let (items, d) = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => return Err(self.bad(format!("APPENDS to a {}", other.kind()))),
                    }
                    self.deepen_top(d)?;
                }
                b'}' => self.push_container(Value::Dict(Rc::new(RefCell::new(Dict::default()))), 0)?,
                b'd' => {
                    let (items, d) = self.pop_mark()?;
                    let dict = Rc::new(RefCell::new(Dict::default()));
                    self.fill_dict(&dict, items)?;
                    self.push_container(Value::Dict(dict), d)?;
                }
                b's' => {
                    let (v, d) = self.pop_d()?;
                    let k = self.pop()?;
                    let dict = match self.top()? {
                        Value::Dict(d) => d.clone(),
                        other => return Err(self.bad(format!("SETITEM on a {}", other.kind()))),
                    };
                    self.fill_dict(&dict, vec![k, v])?;
                    self.deepen_top(d)?;
                }
                b'u' => {
                    let (items, d) = self.pop_mark()?;
                    let dict = match self.top()? {
                        Value::Dict(d) => d.clone(),
                        other => return Err(self.bad(format!("SETITEMS on a {}", other.kind()))),
                    };
                    self.fill_dict(&dict, items)?;
                    self.deepen_top(d)?;
                }
                b'c' => {
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.push(g);
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let i = self.arr::<1>()?[0] as u32;
                    let v = self.top_d()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    let v = self.top_d()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    // MEMOIZE
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.bad("memo overflow"))?;
                    let v = self.top_d()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.arr::<1>()?[0] as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    let s = self.persistent_load(pid)?;
                    self.push(s);
                }
                b'R' | 0x81 => {
                    // REDUCE: callable(*args); NEWOBJ: cls.__new__(cls, *args)
                    let (args, d) = self.pop_d()?;
                    let callable = self.pop()?;
                    let args = match &args {
                        Value::Tuple(t) => t.clone(),
                        other => return Err(self.bad(format!("call arguments are a {}, not a tuple", other.kind()))),
                    };
                    let v = self.call(callable, &args)?;
                    // The result holds at most what the arguments held.
                    self.stack.push((v, d));
                }
                b'b' => {
                    // BUILD: set state on the object below. Dict state (an OrderedDict's
                    // `_metadata` attribute) carries no tensors and is dropped.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(self.bad(format!("BUILD on a {}", other.kind()))),
                    }
                }
                other => {
                    return Err(self.bad(format!(
                        "unsupported pickle opcode 0x{other:02x}{} (mgpu reads the subset torch.save writes for tensors)",
                        opcode_name(other).map(|n| format!(" ({n})")).unwrap_or_default()
                    )))
                }
            }
        }
    }

    fn fill_dict(&self, dict: &Rc<RefCell<Dict>>, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("odd number of items for a dict"));
        }
        let mut d = dict.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.insert(k, v).map_err(|m| self.bad(m))?;
        }
        Ok(())
    }

    fn persistent_load(&mut self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(t) = &pid else {
            return Err(self.bad(format!("persistent id is a {}, not a tuple", pid.kind())));
        };
        match &t[..] {
            [Value::Str(tag), Value::Global(g), Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let dtype = match g {
                    Global::Storage(d) => Some(*d),
                    Global::UntypedStorage => None,
                    _ => {
                        return Err(self
                            .bad("persistent id names a storage type that is not a storage class"))
                    }
                };
                let numel = u64::try_from(*numel).map_err(|_| self.bad("negative storage size"))?;
                if let Some(s) = self.storages.get(&**key) {
                    if s.dtype != dtype || s.numel != numel {
                        return Err(
                            self.bad(format!("storage `{key}` is described two different ways"))
                        );
                    }
                    return Ok(Value::Storage(s.clone()));
                }
                let s = Rc::new(StorageRef {
                    key: key.to_string(),
                    dtype,
                    numel,
                });
                self.storages.insert(key.to_string(), s.clone());
                Ok(Value::Storage(s))
            }
            _ => Err(self.bad("persistent id is not ('storage', type, key, location, numel)")),
        }
    }

    fn call(&self, callable: Value, args: &[Value]) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return Err(self.bad(format!("call of a {}", callable.kind())));
        };
        match g {
            Global::OrderedDict => {
                let dict = Rc::new(RefCell::new(Dict::default()));
                match args {
                    [] => {}
                    [Value::List(pairs)] => {
                        let mut items = Vec::new();
                        for p in pairs.borrow().iter() {
                            match p {
                                Value::Tuple(kv) if kv.len() == 2 => {
                                    items.extend(kv.iter().cloned())
                                }
                                _ => {
                                    return Err(
                                        self.bad("OrderedDict item is not a (key, value) pair")
                                    )
                                }
                            }
                        }
                        self.fill_dict(&dict, items)?;
                    }
                    _ => return Err(self.bad("OrderedDict called with unexpected arguments")),
                }
                Ok(Value::Dict(dict))
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => self.rebuild_tensor(g, args),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                match args.first() {
                    Some(Value::Tensor(t)) if args.len() == 3 || args.len() == 4 => {
                        Ok(Value::Tensor(t.clone()))
                    }
                    _ => Err(self
                        .bad("_rebuild_parameter needs (tensor, requires_grad, hooks[, state])")),
                }
            }
            Global::Size => match args {
                [Value::Tuple(t)] => Ok(Value::Tuple(t.clone())),
                _ => Err(self.bad("torch.Size needs one tuple")),
            },
            Global::Storage(_) | Global::UntypedStorage | Global::Dtype(_) => {
                Err(self.bad("a storage class or dtype is called like a function"))
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
    /// `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`.
    fn rebuild_tensor(&self, g: Global, args: &[Value]) -> Result<Value, PickleError> {
        let v3 = g == Global::RebuildTensorV3;
        let ok_len = if v3 { 7..=8 } else { 6..=7 };
        if !ok_len.contains(&args.len()) {
            return Err(self.bad(format!("tensor rebuild with {} arguments", args.len())));
        }
        let Value::Storage(storage) = &args[0] else {
            return Err(self.bad(format!(
                "tensor rebuild from a {}, not a storage",
                args[0].kind()
            )));
        };
        let int = |v: &Value, what: &str| -> Result<u64, PickleError> {
            match v {
                Value::Int(i) => {
                    u64::try_from(*i).map_err(|_| self.bad(format!("negative {what} {i}")))
                }
                other => Err(self.bad(format!("{what} is a {}, not an int", other.kind()))),
            }
        };
        let ints = |v: &Value, what: &str| -> Result<Vec<u64>, PickleError> {
            match v {
                Value::Tuple(t) => t.iter().map(|x| int(x, what)).collect(),
                other => Err(self.bad(format!("{what} is a {}, not a tuple", other.kind()))),
            }
        };
        let storage_offset = int(&args[1], "storage offset")?;
        let size = ints(&args[2], "size")?;
        let stride = ints(&args[3], "stride")?;
        if size.len() != stride.len() {
            return Err(self.bad(format!(
                "size {size:?} and stride {stride:?} differ in length"
            )));
        }
        let dtype = if v3 {
            match &args[6] {
                Value::Global(Global::Dtype(d)) => *d,
                other => return Err(self.bad(format!("tensor dtype is a {}", other.kind()))),
            }
        } else {
            storage
                .dtype
                .ok_or_else(|| self.bad("_rebuild_tensor_v2 on an untyped storage"))?
        };
        if let Some(sd) = storage.dtype {
            if sd != dtype {
                return Err(self.bad(format!("{dtype} tensor on a {sd} storage")));
            }
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: storage.clone(),
            dtype,
            storage_offset,
            size,
            stride,
        })))
    }
}

fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82..=0x84 => "EXT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

mod drop;

#[cfg(test)]
mod tests;
